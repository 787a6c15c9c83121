//go:build linux

package ipvs

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// KernelLinks keeps the link it looked up: addresses go to it until the
// link is deleted and re-created under another index, which the next
// operation notices (ENODEV) and follows. A veth stands in for the dummy
// link, which this host's kernel lacks.
func TestKernelLinksFollowsARecreatedLink(t *testing.T) {
	newAddrNetns(t)
	l := NewKernelLinks("a0")
	want := func(step string, addrs ...string) {
		t.Helper()
		got, err := l.Addresses()
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		w := []netip.Addr{}
		for _, a := range addrs {
			w = append(w, netip.MustParseAddr(a))
		}
		if len(got) == 0 {
			got = []netip.Addr{}
		}
		if !reflect.DeepEqual(got, w) {
			t.Fatalf("%s: addresses %v, want %v", step, got, w)
		}
	}
	for _, a := range []string{"10.96.0.1", "10.96.0.2", "fd00::1"} {
		if err := l.AddAddress(netip.MustParseAddr(a)); err != nil {
			t.Fatalf("AddAddress %s: %v", a, err)
		}
	}
	if err := l.AddAddress(netip.MustParseAddr("10.96.0.1")); err != nil {
		t.Fatalf("AddAddress of a bound address: %v, want nil", err)
	}
	want("after three adds", "10.96.0.1", "10.96.0.2", "fd00::1")

	// Re-created behind the proxy's back: a new index.
	ipBatch(t, "link del a0\nlink add a0 type veth peer name a1\n")
	if err := l.AddAddress(netip.MustParseAddr("10.96.0.3")); err != nil {
		t.Fatalf("AddAddress after the link was re-created: %v", err)
	}
	want("after the re-creation", "10.96.0.3")
	ipBatch(t, "link del a0\nlink add a0 type veth peer name a1\n")
	if err := l.DeleteAddress(netip.MustParseAddr("10.96.0.3")); err != nil {
		t.Fatalf("DeleteAddress after the link was re-created: %v", err)
	}
	if err := l.AddAddress(netip.MustParseAddr("10.96.0.4")); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteAddress(netip.MustParseAddr("10.96.0.4")); err != nil {
		t.Fatal(err)
	}
	want("after add and delete")

	if err := l.DeleteLink(); err == nil || !strings.Contains(err.Error(), "not a dummy link") {
		t.Errorf("DeleteLink of a veth: %v, want a refusal", err)
	}
}
