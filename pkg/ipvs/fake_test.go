package ipvs

import (
	"errors"
	"io/fs"
	"slices"
	"testing"
)

// The fakes must fail like the kernel does, or the applier tests would
// hide ordering mistakes.
func TestFakesBehaveLikeTheKernel(t *testing.T) {
	log := &FakeLog{}
	fi, fl := NewFakeIPVS(log), NewFakeLinks(log)
	v := vs("10.96.0.10:80/TCP")
	rs := RealServer{Key: RSKey{ip("10.244.1.1"), 80}, Weight: 1}

	if err := fl.AddAddress(ip("10.96.0.10")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("address on a missing link: %v", err)
	}
	if _, err := fl.Addresses(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("listing a missing link: %v", err)
	}
	if err := fi.AddDestination(v.Key, rs); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("destination of a missing service: %v", err)
	}
	if err := fi.UpdateService(v); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("update of a missing service: %v", err)
	}
	if err := fi.AddService(v); err != nil {
		t.Fatal(err)
	}
	if err := fi.AddService(v); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second add: %v", err)
	}
	if err := fi.AddDestination(v.Key, rs); err != nil {
		t.Fatal(err)
	}
	if err := fi.AddDestination(v.Key, rs); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second destination add: %v", err)
	}
	if err := fi.DeleteDestination(v.Key, RSKey{ip("10.244.1.9"), 80}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("delete of a missing destination: %v", err)
	}
	if err := fl.EnsureLink(); err != nil {
		t.Fatal(err)
	}
	if err := fl.EnsureLink(); err != nil {
		t.Fatal(err)
	}
	// Binding twice and unbinding an absent address are fine, as for real.
	for _, a := range []string{"10.96.0.10", "10.96.0.10"} {
		if err := fl.AddAddress(ip(a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fl.DeleteAddress(ip("10.96.0.99")); err != nil {
		t.Fatal(err)
	}
	if err := fi.DeleteService(v.Key); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ip addr add 10.96.0.10/32 dev kube-ipvs0 # failed: link kube-ipvs0: file does not exist",
		"ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.1:80 -m -w 1 # failed: file does not exist",
		"ipvsadm -E -t 10.96.0.10:80 -s rr # failed: file does not exist",
		"ipvsadm -A -t 10.96.0.10:80 -s rr",
		"ipvsadm -A -t 10.96.0.10:80 -s rr # failed: file already exists",
		"ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.1:80 -m -w 1",
		"ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.1:80 -m -w 1 # failed: file already exists",
		"ipvsadm -d -t 10.96.0.10:80 -r 10.244.1.9:80 # failed: file does not exist",
		"ip link add kube-ipvs0 type dummy",
		"ip addr add 10.96.0.10/32 dev kube-ipvs0",
		"ip addr add 10.96.0.10/32 dev kube-ipvs0",
		"ip addr del 10.96.0.99/32 dev kube-ipvs0",
		"ipvsadm -D -t 10.96.0.10:80",
	}
	if got := log.Lines(); !slices.Equal(got, want) {
		t.Errorf("log:\n%q\nwant:\n%q", got, want)
	}
	if st, err := ReadKernel(fi, fl); err != nil || st.Dump() != "addr 10.96.0.10/32\n" {
		t.Errorf("kernel: %v %q", err, st.Dump())
	}
}

// Connection counts follow their destination, as in the kernel, and a
// dump of a missing service is empty.
func TestFakeDestinations(t *testing.T) {
	fi := NewFakeIPVS(nil)
	v := vs("10.96.0.10:80/TCP", "10.244.1.1:80", "10.244.1.2:80=3")
	fi.Put(v)
	rk := v.RealServers[0].Key
	fi.SetConnections(v.Key, rk, 2, 5)
	got, err := fi.Destinations(v.Key)
	want := []DestStats{{RealServer: v.RealServers[0], ActiveConns: 2, InactiveConns: 5}, {RealServer: v.RealServers[1]}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("Destinations = %+v, %v; want %+v", got, err, want)
	}
	if got[0].Conns() != 7 {
		t.Errorf("Conns() = %d", got[0].Conns())
	}
	if err := fi.DeleteDestination(v.Key, rk); err != nil {
		t.Fatal(err)
	}
	if err := fi.AddDestination(v.Key, v.RealServers[0]); err != nil {
		t.Fatal(err)
	}
	if got, _ := fi.Destinations(v.Key); got[0].Conns() != 0 {
		t.Errorf("connections survived their destination: %+v", got)
	}
	if got, err := fi.Destinations(vs("10.96.0.99:80/TCP").Key); err != nil || len(got) != 0 {
		t.Errorf("missing service: %v, %v", got, err)
	}
	fi.FailOn(FakeListDestinationsCmd(v.Key), errBoom)
	if _, err := fi.Destinations(v.Key); !errors.Is(err, errBoom) {
		t.Errorf("injected failure: %v", err)
	}
	if FakeListDestinationsCmd(vs("[fd00::1]:53/UDP").Key) != "ipvsadm -Ln -u [fd00::1]:53" {
		t.Error(FakeListDestinationsCmd(vs("[fd00::1]:53/UDP").Key))
	}
	if full, dests := fi.Dumps(); full != 0 || dests != 4 {
		t.Errorf("Dumps() = %d, %d", full, dests)
	}
}

func TestFakeDeleteLink(t *testing.T) {
	fl := NewFakeLinks(nil)
	if err := fl.DeleteLink(); err != nil {
		t.Fatal(err) // missing: fine, nothing done
	}
	fl.SetAddresses(ip("10.96.0.1"))
	if err := fl.DeleteLink(); err != nil {
		t.Fatal(err)
	}
	if fl.Exists() {
		t.Error("link still there")
	}
	if _, err := fl.Addresses(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("addresses of a deleted link: %v", err)
	}
	if err := fl.EnsureLink(); err != nil {
		t.Fatal(err)
	}
	if addrs, _ := fl.Addresses(); len(addrs) != 0 {
		t.Errorf("a new link has the old addresses: %v", addrs)
	}
	want := []string{"ip link del kube-ipvs0", "ip link add kube-ipvs0 type dummy"}
	if got := fl.Log().Lines(); !slices.Equal(got, want) {
		t.Errorf("log %q, want %q", got, want)
	}
}
