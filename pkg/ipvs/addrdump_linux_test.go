//go:build linux

package ipvs

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

func ifaddrMsg(family, prefixLen uint8, index uint32, attrs ...[]byte) []byte {
	b := []byte{family, prefixLen, 0, 0}
	b = binary.NativeEndian.AppendUint32(b, index)
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func TestParseHostAddr(t *testing.T) {
	v4 := netip.MustParseAddr("10.96.0.10").AsSlice()
	v6 := netip.MustParseAddr("fd00::10").AsSlice()
	peer := netip.MustParseAddr("192.0.2.1").AsSlice()
	for _, tc := range []struct {
		name string
		msg  []byte
		want string // "" : not taken
	}{
		{"IPv4 /32", ifaddrMsg(unix.AF_INET, 32, 7, genlAttr(nil, unix.IFA_ADDRESS, v4), genlAttr(nil, unix.IFA_LOCAL, v4)), "10.96.0.10"},
		{"IPv6 /128", ifaddrMsg(unix.AF_INET6, 128, 7, genlAttr(nil, unix.IFA_ADDRESS, v6)), "fd00::10"},
		{"another link", ifaddrMsg(unix.AF_INET, 32, 8, genlAttr(nil, unix.IFA_ADDRESS, v4)), ""},
		{"not a host prefix", ifaddrMsg(unix.AF_INET, 24, 7, genlAttr(nil, unix.IFA_ADDRESS, v4)), ""},
		{"point-to-point: the local address", ifaddrMsg(unix.AF_INET, 32, 7, genlAttr(nil, unix.IFA_ADDRESS, peer), genlAttr(nil, unix.IFA_LOCAL, v4)), "10.96.0.10"},
		{"too short", []byte{2, 32}, ""},
	} {
		addr, ok, err := parseHostAddr(tc.msg, 7)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		got := ""
		if ok {
			got = addr.String()
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}
