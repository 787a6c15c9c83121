package probe

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/moby/ipvs"
)

// Counts is the size of the IPVS table of the current network namespace.
type Counts struct {
	VS int `json:"vs"` // virtual servers
	RS int `json:"rs"` // real servers, over all virtual servers
}

// procIPVS reads /proc/net/ip_vs in one read: the kernel walks its table
// from the start on every read(2), so small reads would cost O(n²).
type procIPVS struct {
	buf []byte
}

// read returns the text of /proc/net/ip_vs (valid until the next read).
func (p *procIPVS) read() ([]byte, error) {
	f, err := os.Open("/proc/net/ip_vs")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if p.buf == nil {
		p.buf = make([]byte, 8<<20)
	}
	n := 0
	for {
		if n == len(p.buf) {
			p.buf = append(p.buf, make([]byte, len(p.buf))...)
		}
		m, err := f.Read(p.buf[n:])
		n += m
		if m == 0 || err != nil {
			break
		}
	}
	return p.buf[:n], nil
}

// Count reads the table's size from /proc/net/ip_vs (one text file the
// kernel writes in a single pass; cheaper than a netlink request per
// virtual server for the real servers).
func (p *procIPVS) Count() (Counts, error) {
	buf, err := p.read()
	if err != nil {
		return Counts{}, err
	}
	return countProcIPVS(buf), nil
}

// procWant is a set of real servers to look for in /proc/net/ip_vs:
// virtual server ("TCP 0A600001:0050") → real server ("0AF50001:1F90") →
// caller's index.
type procWant map[string]map[string]int

// procKeys formats an IPv4 virtual server and real server as
// /proc/net/ip_vs prints them; ok is false for anything else.
func procKeys(vs VSKey, rs string) (vsKey, rsKey string, ok bool) {
	proto, ap, found := strings.Cut(string(vs), "/")
	v, err1 := netip.ParseAddrPort(ap)
	r, err2 := netip.ParseAddrPort(rs)
	if !found || err1 != nil || err2 != nil || !v.Addr().Is4() || !r.Addr().Is4() {
		return "", "", false
	}
	hex := func(a netip.AddrPort) string {
		b := a.Addr().As4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", b[0], b[1], b[2], b[3], a.Port())
	}
	return proto + " " + hex(v), hex(r), true
}

// scan reports (through seen) every wanted real server present with a
// weight above 0, in one read of /proc/net/ip_vs.
func (p *procIPVS) scan(want procWant, seen func(i int)) error {
	buf, err := p.read()
	if err != nil {
		return err
	}
	scanProcIPVS(buf, want, seen)
	return nil
}

func scanProcIPVS(buf []byte, want procWant, seen func(i int)) {
	var cur map[string]int
	var f [4][]byte
	key := make([]byte, 0, 64)
	for len(buf) > 0 {
		line := buf
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			line, buf = buf[:i], buf[i+1:]
		} else {
			buf = nil
		}
		n := fields(line, &f)
		if n < 2 {
			continue
		}
		if len(f[0]) != 2 || f[0][0] != '-' || f[0][1] != '>' {
			key = append(append(append(key[:0], f[0]...), ' '), f[1]...)
			cur = want[string(key)] // no allocation: a lookup by converted bytes
			continue
		}
		if cur == nil || n < 4 {
			continue
		}
		if i, ok := cur[string(f[1])]; ok && !(len(f[3]) == 1 && f[3][0] == '0') {
			seen(i)
		}
	}
}

// fields splits line at spaces into up to len(f) fields, without
// allocating, and returns how many it found.
func fields(line []byte, f *[4][]byte) int {
	n := 0
	for i := 0; i < len(line) && n < len(f); {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		j := i
		for j < len(line) && line[j] != ' ' {
			j++
		}
		if j > i {
			f[n] = line[i:j]
			n++
		}
		i = j
	}
	return n
}

// countProcIPVS counts virtual and real servers in /proc/net/ip_vs text:
//
//	IP Virtual Server version 1.2.1 (size=4096)
//	Prot LocalAddress:Port Scheduler Flags
//	  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
//	TCP  0A600001:01BB rr
//	  -> 0A000264:4123      Masq    1      0          0
func countProcIPVS(buf []byte) Counts {
	var c Counts
	for len(buf) > 0 {
		line := buf
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			line, buf = buf[:i], buf[i+1:]
		} else {
			buf = nil
		}
		switch {
		case bytes.HasPrefix(line, []byte("  -> ")):
			if !bytes.HasPrefix(line, []byte("  -> RemoteAddress")) {
				c.RS++
			}
		case bytes.HasPrefix(line, []byte("TCP ")), bytes.HasPrefix(line, []byte("UDP ")),
			bytes.HasPrefix(line, []byte("SCTP ")), bytes.HasPrefix(line, []byte("FWM ")):
			c.VS++
		}
	}
	return c
}

// VSKey names a virtual server: PROTO/ADDR:PORT, e.g. TCP/10.96.0.10:80.
type VSKey string

// ipvsService parses a VSKey.
func (k VSKey) service() (*ipvs.Service, error) {
	proto, ap, ok := strings.Cut(string(k), "/")
	if !ok {
		return nil, fmt.Errorf("virtual server %q: want PROTO/ADDR:PORT", k)
	}
	addrPort, err := netip.ParseAddrPort(ap)
	if err != nil {
		return nil, fmt.Errorf("virtual server %q: %w", k, err)
	}
	s := &ipvs.Service{Address: net.IP(addrPort.Addr().AsSlice()), Port: addrPort.Port(), AddressFamily: syscall.AF_INET}
	if addrPort.Addr().Is6() {
		s.AddressFamily = syscall.AF_INET6
	}
	switch proto {
	case "TCP":
		s.Protocol = syscall.IPPROTO_TCP
	case "UDP":
		s.Protocol = syscall.IPPROTO_UDP
	case "SCTP":
		s.Protocol = 132
	default:
		return nil, fmt.Errorf("virtual server %q: unknown protocol %q", k, proto)
	}
	return s, nil
}

// Expect is a state of one virtual server to wait for.
type Expect struct {
	VS VSKey `json:"vs"`
	// RS is a real server ADDR:PORT; empty means the virtual server itself.
	RS string `json:"rs,omitempty"`
	// Present: the virtual server exists with at least MinRS real servers
	// taking connections, or the real server exists with a weight above 0.
	// Not present: the virtual server is gone, or the real server is gone or
	// at weight 0 (draining: it takes no new connections).
	Present bool `json:"present"`
	MinRS   int  `json:"minRS,omitempty"`
}

// ipvsLookup looks single virtual servers up over netlink.
type ipvsLookup struct {
	h *ipvs.Handle
}

func newIPVSLookup() (*ipvsLookup, error) {
	h, err := ipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("opening IPVS netlink: %w", err)
	}
	return &ipvsLookup{h: h}, nil
}

func (l *ipvsLookup) Close() { l.h.Close() }

// Holds reports whether the kernel is in the expected state.
func (l *ipvsLookup) Holds(e Expect) (bool, error) {
	svc, err := e.VS.service()
	if err != nil {
		return false, err
	}
	// A dump of the real servers of a missing virtual server is empty, not
	// an error: that answers for a real server (absent), but the virtual
	// server itself needs a lookup of its own.
	if e.RS == "" {
		if _, err := l.h.GetService(svc); err != nil {
			if errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) {
				return !e.Present, nil
			}
			return false, fmt.Errorf("looking %s up: %w", e.VS, err)
		}
	}
	dests, err := l.h.GetDestinations(svc)
	if err != nil {
		return false, fmt.Errorf("listing the real servers of %s: %w", e.VS, err)
	}
	if e.RS == "" {
		if !e.Present {
			return false, nil
		}
		serving := 0
		for _, d := range dests {
			if d.Weight > 0 {
				serving++
			}
		}
		return serving >= e.MinRS, nil
	}
	want, err := netip.ParseAddrPort(e.RS)
	if err != nil {
		return false, fmt.Errorf("real server %q: %w", e.RS, err)
	}
	for _, d := range dests {
		a, _ := netip.AddrFromSlice(d.Address)
		if a.Unmap() == want.Addr() && d.Port == want.Port() {
			return (d.Weight > 0) == e.Present, nil
		}
	}
	return !e.Present, nil
}
