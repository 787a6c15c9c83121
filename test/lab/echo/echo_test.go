package echo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const testName = "pod-a"

func startServer(t *testing.T, sctp bool) *Server {
	t.Helper()
	cfg := Config{Name: testName, TCPPorts: []int{0}, UDPPorts: []int{0}, Log: &testLog{t: t}}
	if sctp {
		cfg.SCTPPorts = []int{0}
	}
	s, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

type testLog struct{ t *testing.T }

func (l *testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func port(s *Server, proto string) string {
	return fmt.Sprint(s.Addrs(proto)[0].Port())
}

func runClient(t *testing.T, cfg ClientConfig) ([]Result, int) {
	t.Helper()
	if cfg.Count == 0 {
		cfg.Count = 1
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	var got []Result
	fails := RunClient(context.Background(), cfg, func(r Result) { got = append(got, r) })
	return got, fails
}

// checkLine asserts "<pod> <clientIP>:<port>" with the expected client IP.
func checkLine(t *testing.T, line string, clientIP string, wantPort int) {
	t.Helper()
	name, addr, ok := strings.Cut(line, " ")
	if !ok || name != testName {
		t.Fatalf("answer %q: want %q first", line, testName)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatalf("answer %q: client address: %v", line, err)
	}
	if ap.Addr().String() != clientIP {
		t.Fatalf("answer %q: client IP %s, want %s", line, ap.Addr(), clientIP)
	}
	if wantPort != 0 && int(ap.Port()) != wantPort {
		t.Fatalf("answer %q: client port %d, want %d", line, ap.Port(), wantPort)
	}
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := c.LocalAddr().(*net.UDPAddr).Port
	_ = c.Close()
	return p
}

func TestClientAgainstServer(t *testing.T) {
	s := startServer(t, false)
	srcPort := freeUDPPort(t)
	tests := []struct {
		name     string
		cfg      ClientConfig
		clientIP string
		srcPort  int
	}{
		{name: "tcp", cfg: ClientConfig{Proto: "tcp", Addr: "127.0.0.1:" + port(s, "tcp"), Count: 3}, clientIP: "127.0.0.1"},
		{name: "udp fresh sockets", cfg: ClientConfig{Proto: "udp", Addr: "127.0.0.1:" + port(s, "udp"), Count: 3}, clientIP: "127.0.0.1"},
		{name: "udp fixed source port", cfg: ClientConfig{Proto: "udp", Addr: "127.0.0.1:" + port(s, "udp"), Count: 3, SourcePort: srcPort}, clientIP: "127.0.0.1", srcPort: srcPort},
		// 127.0.0.2 is local but not the address routing would pick as the
		// reply's source: the connected client only accepts the reply if
		// the server answers from the address it was sent to.
		{name: "udp reply from the destination address", cfg: ClientConfig{Proto: "udp", Addr: "127.0.0.2:" + port(s, "udp"), Count: 2}, clientIP: "127.0.0.1"},
		{name: "tcp with interval", cfg: ClientConfig{Proto: "tcp", Addr: "127.0.0.1:" + port(s, "tcp"), Count: 2, Interval: 10 * time.Millisecond}, clientIP: "127.0.0.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, fails := runClient(t, tc.cfg)
			if fails != 0 || len(got) != tc.cfg.Count {
				t.Fatalf("got %v with %d failures, want %d answers", got, fails, tc.cfg.Count)
			}
			ports := map[string]bool{}
			for _, r := range got {
				checkLine(t, r.Line, tc.clientIP, tc.srcPort)
				ports[r.Line] = true
			}
			if tc.cfg.Proto == "tcp" && len(ports) != tc.cfg.Count {
				t.Errorf("TCP requests reused a connection: %v", got)
			}
		})
	}
}

func TestClientIPv6(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		_ = ln.Close()
	}
	s := startServer(t, false)
	for _, proto := range []string{"tcp", "udp"} {
		got, fails := runClient(t, ClientConfig{Proto: proto, Addr: "[::1]:" + port(s, proto)})
		if fails != 0 {
			t.Fatalf("%s: %v", proto, got)
		}
		checkLine(t, got[0].Line, "::1", 0)
	}
}

func TestClientFailures(t *testing.T) {
	// A UDP socket that never answers, for the timeout path.
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	closedTCP, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closedTCP.Addr().String()
	_ = closedTCP.Close()

	tests := []struct {
		name    string
		cfg     ClientConfig
		errPart string
	}{
		{name: "tcp refused", cfg: ClientConfig{Proto: "tcp", Addr: closedAddr, Count: 2}, errPart: "refused"},
		{name: "udp timeout", cfg: ClientConfig{Proto: "udp", Addr: silent.LocalAddr().String(), Count: 2, Timeout: 200 * time.Millisecond}, errPart: "timeout"},
		{name: "bad proto", cfg: ClientConfig{Proto: "icmp", Addr: closedAddr, Count: 1}, errPart: "--proto"},
		{name: "source port with tcp", cfg: ClientConfig{Proto: "tcp", Addr: closedAddr, Count: 1, SourcePort: 4000}, errPart: "--source-port"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			got, fails := runClient(t, tc.cfg)
			if fails != tc.cfg.Count {
				t.Fatalf("failures %d, want %d: %v", fails, tc.cfg.Count, got)
			}
			for _, r := range got {
				if !strings.HasPrefix(r.String(), "ERR ") || !strings.Contains(r.String(), tc.errPart) {
					t.Errorf("line %q: want ERR mentioning %q", r.String(), tc.errPart)
				}
				if strings.Contains(r.String(), "\n") {
					t.Errorf("line %q spans lines", r.String())
				}
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %s: requests are not bounded", d)
			}
		})
	}
}

func TestHTTPEndpoints(t *testing.T) {
	s := startServer(t, false)
	base := "http://127.0.0.1:" + port(s, "tcp")
	hc := &http.Client{Timeout: 5 * time.Second}
	tests := []struct {
		path       string
		status     int
		wantPrefix []string // one per expected line
	}{
		{path: "/healthz", status: 200, wantPrefix: []string{"ok"}},
		{path: "/any/path?x=1", status: 200, wantPrefix: []string{testName + " 127.0.0.1:"}},
		{path: "/hold?seconds=2", status: 200, wantPrefix: []string{testName + " 127.0.0.1:", testName + " 127.0.0.1:"}},
		{path: "/hold?seconds=x", status: 400},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := hc.Get(base + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status != 200 {
				return
			}
			var lines []string
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				lines = append(lines, sc.Text())
			}
			if len(lines) != len(tc.wantPrefix) {
				t.Fatalf("lines %q, want %d", lines, len(tc.wantPrefix))
			}
			for i, p := range tc.wantPrefix {
				if !strings.HasPrefix(lines[i], p) {
					t.Errorf("line %q, want prefix %q", lines[i], p)
				}
			}
		})
	}
}

// TestHoldStreams checks that /hold delivers lines while the request is
// still open, not all at the end.
func TestHoldStreams(t *testing.T) {
	s := startServer(t, false)
	resp, err := http.Get("http://127.0.0.1:" + port(s, "tcp") + "/hold?seconds=3")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(line, " 1/3\n") {
		t.Errorf("first line %q", line)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("first line took %s; not streamed", d)
	}
}

func TestSCTP(t *testing.T) {
	probe, err := sctpSocket(unix.AF_INET)
	if err == nil {
		_ = unix.Close(probe)
	}
	supported := !errors.Is(err, ErrSCTPUnsupported)
	s := startServer(t, true)
	if !supported {
		// The clear error path: the server still serves TCP and UDP and
		// says why SCTP is off; the client fails with the same reason.
		if !errors.Is(s.SCTPErr(), ErrSCTPUnsupported) || len(s.Addrs("sctp")) != 0 {
			t.Fatalf("SCTPErr %v, addrs %v", s.SCTPErr(), s.Addrs("sctp"))
		}
		got, fails := runClient(t, ClientConfig{Proto: "sctp", Addr: "127.0.0.1:9", Count: 1})
		if fails != 1 || !strings.Contains(got[0].String(), "no SCTP support") {
			t.Fatalf("client on a kernel without SCTP: %v", got)
		}
		if got, fails := runClient(t, ClientConfig{Proto: "tcp", Addr: "127.0.0.1:" + port(s, "tcp")}); fails != 0 {
			t.Fatalf("TCP must still work without SCTP: %v", got)
		}
		t.Log("kernel has no SCTP; checked the error path only")
		return
	}
	if s.SCTPErr() != nil {
		t.Fatalf("SCTPErr: %v", s.SCTPErr())
	}
	got, fails := runClient(t, ClientConfig{Proto: "sctp", Addr: "127.0.0.1:" + port(s, "sctp"), Count: 3})
	if fails != 0 {
		t.Fatalf("sctp: %v", got)
	}
	for _, r := range got {
		checkLine(t, r.Line, "127.0.0.1", 0)
	}
}

func TestMainClientOutputAndExitCode(t *testing.T) {
	s := startServer(t, false)
	tests := []struct {
		name     string
		args     []string
		code     int
		okLines  int
		errLines int
	}{
		{name: "all succeed", args: []string{"client", "--proto", "udp", "--addr", "127.0.0.1:" + port(s, "udp"), "--count", "3"}, code: 0, okLines: 3},
		{name: "all fail", args: []string{"client", "--proto", "udp", "--addr", "127.0.0.1:" + fmt.Sprint(freeUDPPort(t)), "--count", "2", "--timeout", "300ms"}, code: 1, errLines: 2},
		{name: "usage", args: []string{"client", "--count", "x"}, code: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(tc.args, &out, &errOut)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tc.code, out.String(), errOut.String())
			}
			var ok, bad int
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				switch {
				case strings.HasPrefix(l, "ERR "):
					bad++
				case strings.HasPrefix(l, testName+" "):
					ok++
				}
			}
			if ok != tc.okLines || bad != tc.errLines {
				t.Errorf("output %q: %d answers and %d ERR lines, want %d and %d", out.String(), ok, bad, tc.okLines, tc.errLines)
			}
		})
	}
}

func TestMainServeStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	pr, pw := io.Pipe()
	go func() {
		done <- serveMain(ctx, []string{"--tcp", "0", "--udp", "", "--sctp", ""}, pw, io.Discard)
		_ = pw.Close()
	}()
	// Wait for the banner, which is printed once the ports are bound.
	br := bufio.NewReader(pr)
	banner, err := br.ReadString('\n')
	if err != nil || !strings.Contains(banner, "serving tcp") {
		t.Fatalf("banner %q: %v", banner, err)
	}
	go func() { _, _ = io.Copy(io.Discard, br) }()
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop")
	}
}

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{in: "", want: nil},
		{in: "8080", want: []int{8080}},
		{in: "80, 8080,", want: []int{80, 8080}},
		{in: "x", wantErr: true},
		{in: "70000", wantErr: true},
	}
	for _, tc := range tests {
		got, err := ParsePorts(tc.in)
		if (err != nil) != tc.wantErr || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("ParsePorts(%q) = %v, %v", tc.in, got, err)
		}
	}
}

// TestStreamMachineryOverTCP runs the SCTP code paths (raw non-blocking
// sockets on the runtime poller: listen, accept, close, connect, read with
// deadlines) with TCP, so they are tested on kernels without SCTP too.
func TestStreamMachineryOverTCP(t *testing.T) {
	s := &Server{cfg: Config{Name: testName}, logger: log.New(&testLog{t: t}, "", 0)}
	l, err := listenStream(unix.IPPROTO_TCP, 0)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		s.serveSCTP(l)
	}()
	silent, err := net.Listen("tcp4", "127.0.0.1:0") // accepts (backlog) but never writes
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	closed, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().(*net.TCPAddr).AddrPort()
	_ = closed.Close()

	port := l.addr.Port()
	tests := []struct {
		name     string
		addr     netip.AddrPort
		timeout  time.Duration
		clientIP string // expected client IP, or "" for an error
		errPart  string
	}{
		{name: "ipv4", addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), clientIP: "127.0.0.1"},
		{name: "ipv6", addr: netip.AddrPortFrom(netip.MustParseAddr("::1"), port), clientIP: "::1"},
		{name: "refused", addr: closedAddr, errPart: "refused"},
		{name: "no answer", addr: silent.Addr().(*net.TCPAddr).AddrPort(), timeout: 200 * time.Millisecond, errPart: "timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.timeout == 0 {
				tc.timeout = 2 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			out, err := streamRequest(ctx, unix.IPPROTO_TCP, tc.addr)
			if tc.clientIP == "" {
				if err == nil || !strings.Contains(err.Error(), tc.errPart) {
					t.Fatalf("got %q, %v; want an error mentioning %q", out, err, tc.errPart)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkLine(t, strings.TrimSuffix(out, "\n"), tc.clientIP, 0)
		})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("accept loop did not stop on Close")
	}
}
