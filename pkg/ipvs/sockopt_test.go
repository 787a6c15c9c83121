package ipvs

import (
	"encoding/binary"
	"net/netip"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// kernelService writes one struct ip_vs_service_entry as the kernel does.
func kernelService(b []byte, i int, proto uint16, addr string, port uint16, fwmark uint32, sched string, flags, timeout uint32, numDests int) {
	e := b[soServicesHeader+i*soServiceLen:][:soServiceLen]
	binary.NativeEndian.PutUint16(e[0:], proto)
	a := netip.MustParseAddr(addr).As4()
	copy(e[4:8], a[:])
	binary.BigEndian.PutUint16(e[8:], port)
	binary.NativeEndian.PutUint32(e[12:], fwmark)
	copy(e[16:32], sched)
	binary.NativeEndian.PutUint32(e[32:], flags)
	binary.NativeEndian.PutUint32(e[36:], timeout)
	binary.NativeEndian.PutUint32(e[40:], 0xffffffff) // netmask
	binary.NativeEndian.PutUint32(e[44:], uint32(numDests))
	binary.NativeEndian.PutUint32(e[48:], 12345) // stats.conns
}

// kernelDest writes one struct ip_vs_dest_entry as the kernel does.
func kernelDest(b []byte, i int, addr string, port uint16, connFlags uint32, weight int32) {
	e := b[soDestsHeader+i*soDestLen:][:soDestLen]
	a := netip.MustParseAddr(addr).As4()
	copy(e[0:4], a[:])
	binary.BigEndian.PutUint16(e[4:], port)
	binary.NativeEndian.PutUint32(e[8:], connFlags)
	binary.NativeEndian.PutUint32(e[12:], uint32(weight))
	binary.NativeEndian.PutUint32(e[24:], 3) // activeconns
}

func TestDecodeServices(t *testing.T) {
	b := encodeGetServices(4)
	if got := binary.NativeEndian.Uint32(b); got != 4 || len(b) != 8+4*104 {
		t.Fatalf("request: num %d, %d bytes", got, len(b))
	}
	kernelService(b, 0, unix.IPPROTO_TCP, "10.96.0.1", 443, 0, "rr", uint32(FlagHashed), 0, 1)
	kernelService(b, 1, unix.IPPROTO_UDP, "10.96.0.10", 53, 0, "sh", uint32(FlagHashed|FlagPersistent|FlagSched2), 10800, 2)
	kernelService(b, 2, unix.IPPROTO_TCP, "0.0.0.0", 0, 7, "rr", uint32(FlagHashed), 0, 1) // firewall mark
	got, full := decodeServices(b)
	if full {
		t.Error("three of four slots filled, reported full")
	}
	if len(got) != 3 || got[2].vs != nil || got[2].numDests != 1 {
		t.Fatalf("got %+v", got)
	}
	want := []*VirtualServer{
		{Key: VSKey{Addr: ip("10.96.0.1"), Port: 443, Proto: ProtoTCP}, Scheduler: "rr"},
		{Key: VSKey{Addr: ip("10.96.0.10"), Port: 53, Proto: ProtoUDP}, Scheduler: "sh", Flags: FlagPersistent | FlagSched2, Timeout: 10800},
	}
	for i, w := range want {
		if !reflect.DeepEqual(got[i].vs, w) || got[i].numDests != i+1 {
			t.Errorf("entry %d: %+v (%d dests), want %+v", i, got[i].vs, got[i].numDests, w)
		}
	}
	kernelService(b, 3, unix.IPPROTO_SCTP, "10.96.0.11", 3868, 0, "wlc", 0, 0, 0)
	if got, full := decodeServices(b); !full || len(got) != 4 || got[3].vs.Key.Proto != ProtoSCTP {
		t.Errorf("all slots filled: full %v, %+v", full, got)
	}
}

func TestDecodeDests(t *testing.T) {
	key := VSKey{Addr: ip("10.96.0.10"), Port: 53, Proto: ProtoUDP}
	b := make([]byte, soDestsHeader+3*soDestLen)
	encodeGetDests(b, key, 3)
	if binary.NativeEndian.Uint16(b[0:]) != unix.IPPROTO_UDP || netip.AddrFrom4([4]byte(b[4:8])) != key.Addr ||
		binary.BigEndian.Uint16(b[8:]) != 53 || binary.NativeEndian.Uint32(b[16:]) != 3 {
		t.Fatalf("request header % x", b[:soDestsHeader])
	}
	kernelDest(b, 0, "10.244.1.5", 53, 0, 1)                     // masquerading
	kernelDest(b, 1, "10.244.1.6", 5353, connLocalNode, 0)       // local node: read as masquerading
	kernelDest(b, 2, "192.0.2.7", 53, uint32(ForwardTunnel), -1) // negative weights pass through
	got, full := decodeDests(nil, b)
	want := []RealServer{
		{Key: RSKey{ip("10.244.1.5"), 53}, Weight: 1},
		{Key: RSKey{ip("10.244.1.6"), 5353}, Weight: 0},
		{Key: RSKey{ip("192.0.2.7"), 53}, Weight: -1, Forward: ForwardTunnel},
	}
	if !full || !reflect.DeepEqual(got, want) {
		t.Errorf("full %v, got %+v, want %+v", full, got, want)
	}
	clear(b[soDestsHeader+2*soDestLen:][:6])
	if got, full := decodeDests(nil, b); full || len(got) != 2 {
		t.Errorf("two of three slots: full %v, %+v", full, got)
	}
}

// genlAttr appends one netlink attribute.
func genlAttr(b []byte, typ uint16, val []byte) []byte {
	l := unix.SizeofNlAttr + len(val)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func genlService(af, proto uint16, addr string, port uint16, fwmark uint32, sched string, flags, timeout uint32) []byte {
	u16 := func(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	a := netip.MustParseAddr(addr).As16()
	var in []byte
	in = genlAttr(in, svcAttrAF, u16(af))
	in = genlAttr(in, svcAttrProtocol, u16(proto))
	in = genlAttr(in, svcAttrAddr, a[:])
	in = genlAttr(in, svcAttrPort, binary.BigEndian.AppendUint16(nil, port))
	in = genlAttr(in, svcAttrFWMark, u32(fwmark))
	in = genlAttr(in, svcAttrSched, append([]byte(sched), 0))
	in = genlAttr(in, svcAttrFlags, append(u32(flags), u32(0xffffffff)...))
	in = genlAttr(in, svcAttrTimeout, u32(timeout))
	in = genlAttr(in, 10, make([]byte, 40)) // IPVS_SVC_ATTR_STATS, ignored
	return genlAttr(nil, genlAttrService|0x8000, in)
}

func TestParseGenlService6(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  []byte
		want *VirtualServer
	}{
		{"IPv6 TCP", genlService(afInet6, unix.IPPROTO_TCP, "fd00::10", 80, 0, "rr", uint32(FlagHashed), 0),
			&VirtualServer{Key: VSKey{Addr: ip("fd00::10"), Port: 80, Proto: ProtoTCP}, Scheduler: "rr"}},
		{"IPv6 UDP with affinity", genlService(afInet6, unix.IPPROTO_UDP, "fd00::a", 53, 0, "sh", uint32(FlagHashed|FlagPersistent|FlagSched1), 600),
			&VirtualServer{Key: VSKey{Addr: ip("fd00::a"), Port: 53, Proto: ProtoUDP}, Scheduler: "sh", Flags: FlagPersistent | FlagSched1, Timeout: 600}},
		{"IPv4: read over the socket options", genlService(unix.AF_INET, unix.IPPROTO_TCP, "10.96.0.1", 443, 0, "rr", 0, 0), nil},
		{"firewall mark", genlService(afInet6, unix.IPPROTO_TCP, "::", 0, 9, "rr", 0, 0), nil},
		{"unknown protocol", genlService(afInet6, 99, "fd00::1", 1, 0, "rr", 0, 0), nil},
	} {
		got, err := parseGenlService6(tc.msg)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
	if _, err := parseGenlService6([]byte{200, 0, 1, 0}); err == nil {
		t.Error("attribute longer than the message accepted")
	}
}

func TestSortRealServers(t *testing.T) {
	rs := func(addrs ...string) []RealServer {
		var out []RealServer
		for _, a := range addrs {
			out = append(out, RealServer{Key: RSKey{ip(a), 80}, Weight: 1})
		}
		return out
	}
	for _, tc := range []struct{ in, want []RealServer }{
		{nil, nil},
		{rs("10.0.0.1"), rs("10.0.0.1")},
		{rs("10.0.0.1", "10.0.0.2", "10.0.0.3"), rs("10.0.0.1", "10.0.0.2", "10.0.0.3")},
		{rs("10.0.0.3", "10.0.0.2", "10.0.0.1"), rs("10.0.0.1", "10.0.0.2", "10.0.0.3")}, // the kernel's order
		{rs("10.0.0.2", "10.0.0.3", "10.0.0.1"), rs("10.0.0.1", "10.0.0.2", "10.0.0.3")},
	} {
		sortRealServers(tc.in)
		if !reflect.DeepEqual(tc.in, tc.want) {
			t.Errorf("got %v, want %v", tc.in, tc.want)
		}
	}
}
