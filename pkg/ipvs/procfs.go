package ipvs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strconv"

	v1 "k8s.io/api/core/v1"
)

// parseProcIPVS reads the kernel's /proc/net/ip_vs (`cat /proc/net/ip_vs`,
// the table behind `ipvsadm -Ln` with addresses in hex) and returns the
// real servers of every TCP, UDP and SCTP virtual server, by key. A virtual
// server without real servers is present with an empty slice, so that
// presence can be told from absence.
//
// The kernel has no netlink request for every destination at once: reading
// them over netlink costs one round trip per virtual server, while this
// file is one read whatever the table's size. It carries what a real server
// is compared on (address, port, forwarding method, weight); the service
// attributes it lacks (scheduler flags) still come from the netlink dump.
//
// Lines look like this (kernel's ip_vs_info_seq_show):
//
//	TCP  0A600001:0050 rr
//	  -> 0AF40102:1F90      Masq    1      0          0
//	UDP  [fd00:0010:0096:0000:0000:0000:0000:000a]:0035 rr persistent 10800 00000080
//	  -> [fd00:0010:0244:0001:0000:0000:0000:0005]:0035      Masq    1      0          0
//	FWM  00000001 rr
func parseProcIPVS(r io.Reader) (map[VSKey][]RealServer, error) {
	out := make(map[VSKey][]RealServer)
	sc := bufio.NewScanner(r)
	// Large reads: the kernel fills up to the buffer per read call.
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var cur VSKey
	inVS := false // the current section is a virtual server we keep
	line := 0
	var f [4][]byte // the first fields of a line, without allocating
	for sc.Scan() {
		line++
		text := sc.Bytes()
		if line <= 3 {
			// "IP Virtual Server version ...", then two header lines.
			if line == 1 && !bytes.HasPrefix(text, []byte("IP Virtual Server")) {
				return nil, fmt.Errorf("line 1: not an IPVS table: %q", text)
			}
			continue
		}
		n := fields(text, &f)
		if n == 0 {
			continue
		}
		if string(f[0]) == "->" {
			if !inVS {
				continue // a destination of a firewall-mark service
			}
			if n < 4 {
				return nil, fmt.Errorf("line %d: short destination line %q", line, text)
			}
			ap, err := parseProcAddrPort(f[1])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			fwd, err := parseProcForward(string(f[2]))
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			w, err := strconv.Atoi(string(f[3]))
			if err != nil {
				return nil, fmt.Errorf("line %d: weight %q: %w", line, f[3], err)
			}
			out[cur] = append(out[cur], RealServer{Key: RSKey{Addr: ap.Addr(), Port: ap.Port()}, Weight: w, Forward: fwd})
			continue
		}
		inVS = false
		// The kernel names them as Kubernetes does: TCP, UDP, SCTP.
		proto, ok := ProtoFromV1(v1.Protocol(f[0]))
		if !ok {
			continue // FWM, or a protocol the proxy never programs
		}
		if n < 2 {
			return nil, fmt.Errorf("line %d: short service line %q", line, text)
		}
		ap, err := parseProcAddrPort(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		cur = VSKey{Addr: ap.Addr(), Port: ap.Port(), Proto: proto}
		inVS = true
		// A service and its destinations are one record of the kernel's
		// iterator, which may show a record twice when the table changes
		// between reads: the last copy wins.
		out[cur] = []RealServer{}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if line == 0 {
		return nil, fmt.Errorf("empty IPVS table")
	}
	return out, nil
}

// fields puts up to len(f) space-separated fields of line in f and says
// how many it found.
func fields(line []byte, f *[4][]byte) int {
	n := 0
	for i := 0; i < len(line) && n < len(f); {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		j := i
		for j < len(line) && line[j] != ' ' && line[j] != '\t' {
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

// parseProcForward maps the kernel's ip_vs_fwd_name. "Local" is what the
// kernel makes of masquerading to one of its own addresses; it is reported
// as masquerading, as over netlink (see fromLibDestination).
func parseProcForward(s string) (Forward, error) {
	switch s {
	case "Masq", "Local":
		return ForwardMasq, nil
	case "Tunnel":
		return ForwardTunnel, nil
	case "Route":
		return ForwardRoute, nil
	}
	return 0, fmt.Errorf("unknown forwarding method %q", s)
}

// parseProcAddrPort parses "0A600001:0050" (IPv4 in host-order hex) or
// "[fd00:0010:...:000a]:0035".
func parseProcAddrPort(s []byte) (netip.AddrPort, error) {
	i := bytes.LastIndexByte(s, ':')
	if i < 0 || len(s)-i-1 != 4 {
		return netip.AddrPort{}, fmt.Errorf("address %q: no :PORT", s)
	}
	port, ok := parseHex(s[i+1:])
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("address %q: port is not hex", s)
	}
	host := s[:i]
	var addr netip.Addr
	if len(host) > 2 && host[0] == '[' && host[len(host)-1] == ']' {
		var err error
		addr, err = netip.ParseAddr(string(host[1 : len(host)-1]))
		if err != nil || !addr.Is6() {
			return netip.AddrPort{}, fmt.Errorf("address %q: not IPv6", s)
		}
	} else {
		v, ok := parseHex(host)
		if !ok || len(host) != 8 {
			return netip.AddrPort{}, fmt.Errorf("address %q: not IPv4 hex", s)
		}
		addr = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}

// parseHex parses up to 8 hex digits.
func parseHex(b []byte) (uint32, bool) {
	if len(b) == 0 || len(b) > 8 {
		return 0, false
	}
	var v uint32
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | uint32(c-'0')
		case 'a' <= c && c <= 'f':
			v = v<<4 | uint32(c-'a'+10)
		case 'A' <= c && c <= 'F':
			v = v<<4 | uint32(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}
