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
