package proxy

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
)

// LocalAddresses, with one strict dump per link, finds what a dump of
// every address does.
func TestLocalAddressesMatchesAFullDump(t *testing.T) {
	got, err := LocalAddresses()
	if err != nil {
		t.Fatal(err)
	}
	all, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var want []netip.Addr
	for _, a := range all {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && !ip.Unmap().IsLinkLocalUnicast() {
			want = append(want, ip.Unmap())
		}
	}
	slices.SortFunc(want, netip.Addr.Compare)
	want = slices.Compact(want)
	if !slices.Equal(got, want) {
		t.Fatalf("LocalAddresses() = %v, want %v", got, want)
	}
	if len(got) == 0 {
		t.Fatal("no address at all (not even loopback)")
	}
	// Without strict checking, one dump filtered here.
	fallback, err := dumpAddrs(nil, 0, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(fallback, netip.Addr.Compare)
	if !slices.Equal(slices.Compact(fallback), want) {
		t.Fatalf("fallback = %v, want %v", fallback, want)
	}
}
