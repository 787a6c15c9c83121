//go:build linux

package ipvs

import (
	"errors"
	"io/fs"
	"net"
	"strings"
	"testing"

	libipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"
)

// The netlink calls need root and an IPVS kernel; the conversions around
// them do not.

func TestLibServiceRoundTrip(t *testing.T) {
	for _, v := range []*VirtualServer{
		{Key: VSKey{Addr: ip("10.96.0.10"), Port: 80, Proto: ProtoTCP}, Scheduler: "rr"},
		{Key: VSKey{Addr: ip("fd00::10"), Port: 53, Proto: ProtoUDP}, Scheduler: "mh", Flags: FlagSched2},
		{Key: VSKey{Addr: ip("10.96.0.11"), Port: 3868, Proto: ProtoSCTP}, Scheduler: "rr", Flags: FlagPersistent, Timeout: 10800},
	} {
		s := toLibService(v)
		if v.Key.Addr.Is4() && (s.AddressFamily != unix.AF_INET || s.Netmask != 0xffffffff || len(s.Address.To4()) != 4) {
			t.Errorf("%s: IPv4 service %+v", v.Key, s)
		}
		if v.Key.Addr.Is6() && (s.AddressFamily != unix.AF_INET6 || s.Netmask != 128) {
			t.Errorf("%s: IPv6 service %+v", v.Key, s)
		}
		s.Flags |= uint32(FlagHashed) // as the kernel reports it
		back, ok := fromLibService(s)
		if !ok || back.Key != v.Key || !back.sameConfig(v) {
			t.Errorf("round trip of %+v gave %+v", v, back)
		}
	}
}

func TestFromLibSkipsForeignKinds(t *testing.T) {
	if _, ok := fromLibService(&libipvs.Service{FWMark: 7, AddressFamily: unix.AF_INET}); ok {
		t.Error("firewall-mark service accepted")
	}
	if _, ok := fromLibService(&libipvs.Service{Protocol: 99, Address: net.ParseIP("10.0.0.1")}); ok {
		t.Error("unknown protocol accepted")
	}
	if _, ok := fromLibService(nil); ok {
		t.Error("nil accepted")
	}
	// net.ParseIP gives 16-byte IPv4 addresses: they must come back as IPv4.
	v, ok := fromLibService(&libipvs.Service{Protocol: unix.IPPROTO_TCP, Address: net.ParseIP("10.0.0.1"), Port: 80})
	if !ok || !v.Key.Addr.Is4() {
		t.Errorf("got %+v", v)
	}
}

func TestFromLibDestination(t *testing.T) {
	rs, ok := fromLibDestination(&libipvs.Destination{Address: net.ParseIP("10.244.1.2"), Port: 8080, Weight: 1, ConnectionFlags: libipvs.ConnFwdLocalNode})
	want := RealServer{Key: RSKey{ip("10.244.1.2"), 8080}, Weight: 1, Forward: ForwardMasq}
	if !ok || rs != want {
		t.Errorf("local-node destination read as %+v, want %+v", rs, want)
	}
	d := toLibDestination(RealServer{Key: RSKey{ip("fd00::1"), 80}, Weight: 3, Forward: ForwardRoute})
	if d.Weight != 3 || d.ConnectionFlags != libipvs.ConnFwdDirectRoute || d.AddressFamily != unix.AF_INET6 {
		t.Errorf("destination %+v", d)
	}
}

func TestHostAddr(t *testing.T) {
	if got := hostAddr(ip("10.96.0.10")).IPNet.String(); got != "10.96.0.10/32" {
		t.Errorf("got %s", got)
	}
	if got := hostAddr(ip("fd00::10")).IPNet.String(); got != "fd00::10/128" {
		t.Errorf("got %s", got)
	}
}

// TestNewKernelIPVSWithoutIPVS runs the availability probe for real: on a
// kernel without IPVS (like most CI hosts) it must fail clearly instead of
// returning a handle that silently does nothing.
func TestNewKernelIPVSWithoutIPVS(t *testing.T) {
	k, err := NewKernelIPVS()
	if err == nil {
		k.Close()
		t.Skip("this kernel has IPVS")
	}
	if !errors.Is(err, ErrIPVSUnavailable) {
		t.Skipf("no generic netlink here: %v", err)
	}
	if !strings.Contains(err.Error(), "load the ip_vs module") {
		t.Errorf("unclear error: %v", err)
	}
	t.Log(err)
}

// A missing link reads as fs.ErrNotExist (Cleanup relies on it) and
// deleting it is fine. Looking a link up needs no privilege.
func TestKernelLinksMissing(t *testing.T) {
	l := NewKernelLinks("kipvs-no-such")
	_, err := l.Addresses()
	if err != nil && !errors.Is(err, fs.ErrNotExist) && strings.Contains(err.Error(), "operation not permitted") {
		t.Skipf("no netlink here: %v", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Addresses of a missing link: %v", err)
	}
	if err := l.DeleteLink(); err != nil {
		t.Errorf("DeleteLink of a missing link: %v", err)
	}
	if err := l.AddAddress(ip("10.96.0.1")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("AddAddress on a missing link: %v", err)
	}
}
