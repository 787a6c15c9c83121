package echo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ClientConfig is one client run.
type ClientConfig struct {
	Proto string // "tcp", "udp" or "sctp"
	Addr  string // HOST:PORT; HOST may be a name, an IPv4 or a [bracketed] IPv6
	Count int
	// Timeout bounds each request, connection set-up included.
	Timeout time.Duration
	// SourcePort, when non-zero, is the local port of every UDP request.
	SourcePort int
	// Interval is the pause between two requests.
	Interval time.Duration
	// Path is the HTTP path of TCP requests.
	Path string
}

// Validate reports a bad configuration before anything is sent.
func (c ClientConfig) Validate() error {
	switch c.Proto {
	case "tcp", "udp", "sctp":
	default:
		return fmt.Errorf("--proto must be tcp, udp or sctp, not %q", c.Proto)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("--addr %q: %v", c.Addr, err)
	}
	if c.Count < 1 {
		return fmt.Errorf("--count must be at least 1")
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("--timeout must be positive")
	}
	if c.Interval < 0 {
		return fmt.Errorf("--interval must not be negative")
	}
	if c.SourcePort < 0 || c.SourcePort > 65535 {
		return fmt.Errorf("--source-port must be in 0..65535")
	}
	if c.SourcePort != 0 && c.Proto != "udp" {
		// A fixed TCP/SCTP source port would collide with the previous
		// connection's TIME_WAIT state on the second request.
		return fmt.Errorf("--source-port is only supported with --proto udp")
	}
	return nil
}

// Result is the outcome of one request.
type Result struct {
	Line string // the server's answer without the trailing newline
	Err  error
}

// String is the line the client prints.
func (r Result) String() string {
	if r.Err != nil {
		return "ERR " + oneLine(r.Err.Error())
	}
	return r.Line
}

// RunClient sends cfg.Count requests one after the other and calls emit
// with each result as soon as it is known. It returns the number of
// failures; it stops early only when ctx ends (the remaining requests then
// count as failures and are emitted as such).
func RunClient(ctx context.Context, cfg ClientConfig, emit func(Result)) int {
	if err := cfg.Validate(); err != nil {
		emit(Result{Err: err})
		return cfg.Count
	}
	failures := 0
	httpClient := &http.Client{
		Timeout: cfg.Timeout,
		// No proxy from the environment, and a new connection per request
		// so that every request is a new connection for the proxy.
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	for i := 0; i < cfg.Count; i++ {
		if i > 0 && cfg.Interval > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(cfg.Interval):
			}
		}
		var r Result
		if err := ctx.Err(); err != nil {
			r.Err = err
		} else {
			rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
			r = oneRequest(rctx, cfg, httpClient)
			cancel()
		}
		if r.Err != nil {
			failures++
		}
		emit(r)
	}
	return failures
}

func oneRequest(ctx context.Context, cfg ClientConfig, hc *http.Client) Result {
	var (
		out string
		err error
	)
	switch cfg.Proto {
	case "tcp":
		out, err = httpRequest(ctx, hc, cfg.Addr, cfg.Path)
	case "udp":
		out, err = udpRequest(ctx, cfg.Addr, cfg.SourcePort)
	case "sctp":
		var ap netip.AddrPort
		ap, err = resolve(ctx, cfg.Addr)
		if err == nil {
			out, err = sctpRequest(ctx, ap)
		}
	}
	if err == nil && out == "" {
		err = errors.New("empty answer")
	}
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("timeout after %s: %w", cfg.Timeout, err)
		}
		return Result{Err: err}
	}
	return Result{Line: strings.TrimRight(out, "\r\n")}
}

func httpRequest(ctx context.Context, hc *http.Client, addr, path string) (string, error) {
	if path == "" {
		path = "/"
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %s: %s", resp.Status, oneLine(string(body)))
	}
	return string(body), nil
}

func udpRequest(ctx context.Context, addr string, sourcePort int) (string, error) {
	d := net.Dialer{}
	if sourcePort != 0 {
		d.LocalAddr = &net.UDPAddr{Port: sourcePort}
	}
	// A connected socket: only the address we sent to may answer, which is
	// what a proxy must get right (replies un-NATed to the service address).
	conn, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 64*1024)
	n, err := conn.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func resolve(ctx context.Context, addr string) (netip.AddrPort, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad port %q", portStr)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(ip, uint16(port)), nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("no address for %q", host)
	}
	return netip.AddrPortFrom(ips[0].Unmap(), uint16(port)), nil
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(s), " ")
}
