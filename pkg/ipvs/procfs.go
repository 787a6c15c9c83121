package ipvs

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
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
	for sc.Scan() {
		line++
		text := sc.Text()
		if line <= 3 {
			// "IP Virtual Server version ...", then two header lines.
			if line == 1 && !strings.HasPrefix(text, "IP Virtual Server") {
				return nil, fmt.Errorf("line 1: not an IPVS table: %q", text)
			}
			continue
		}
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		if f[0] == "->" {
			if !inVS {
				continue // a destination of a firewall-mark service
			}
			if len(f) < 4 {
				return nil, fmt.Errorf("line %d: short destination line %q", line, text)
			}
			ap, err := parseProcAddrPort(f[1])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			fwd, err := parseProcForward(f[2])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			w, err := strconv.Atoi(f[3])
			if err != nil {
				return nil, fmt.Errorf("line %d: weight %q: %w", line, f[3], err)
			}
			out[cur] = append(out[cur], RealServer{Key: RSKey{Addr: ap.Addr(), Port: ap.Port()}, Weight: w, Forward: fwd})
			continue
		}
		inVS = false
		proto, ok := procProto(f[0])
		if !ok {
			continue // FWM, or a protocol the proxy never programs
		}
		if len(f) < 2 {
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

// procProto maps the kernel's ip_vs_proto_name.
func procProto(s string) (Proto, bool) {
	switch s {
	case "TCP":
		return ProtoTCP, true
	case "UDP":
		return ProtoUDP, true
	case "SCTP":
		return ProtoSCTP, true
	}
	return 0, false
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
func parseProcAddrPort(s string) (netip.AddrPort, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || len(s)-i-1 != 4 {
		return netip.AddrPort{}, fmt.Errorf("address %q: no :PORT", s)
	}
	pb, err := hex.DecodeString(s[i+1:])
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: port: %w", s, err)
	}
	port := binary.BigEndian.Uint16(pb)
	host := s[:i]
	var addr netip.Addr
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		addr, err = netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !addr.Is6() {
			return netip.AddrPort{}, fmt.Errorf("address %q: not IPv6", s)
		}
	} else {
		b, err := hex.DecodeString(host)
		if err != nil || len(b) != 4 {
			return netip.AddrPort{}, fmt.Errorf("address %q: not IPv4 hex", s)
		}
		addr = netip.AddrFrom4([4]byte(b))
	}
	return netip.AddrPortFrom(addr.Unmap(), port), nil
}
