package ipvs

import (
	"fmt"
	"strings"
	"syscall"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// One refused op, mid-batch, whatever the kernel's answer, is its
// Service's failure: the rest of the batch is applied, the sync succeeds,
// and the op is retried after its backoff.
func TestOneRefusedOpStaysWithItsService(t *testing.T) {
	snap := snapshot(
		svc("default", "a", ips("10.96.0.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.1", 80, "ready"))),
		svc("default", "b", ips("10.96.0.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"), ep("10.244.1.3", 80, "ready"))),
		svc("default", "c", ips("10.96.0.3"), port("dns", v1.ProtocolUDP, 53, 0, ep("10.244.1.4", 53, "ready"))),
	)
	for _, tc := range []struct {
		op, on     string // the refused op, and which fake refuses it
		errno      syscall.Errno
		svc        string
		reason     string
		incomplete string // the servers left out until the retry
	}{
		{"ipvsadm -A -t 10.96.0.2:80 -s rr", "ipvs", syscall.ENOENT, "b", ReasonSchedulerUnavailable, "10.96.0.2:80"},
		{"ipvsadm -A -t 10.96.0.2:80 -s rr", "ipvs", syscall.EINVAL, "b", ReasonKernelRefused, "10.96.0.2:80"},
		{"ipvsadm -a -t 10.96.0.2:80 -r 10.244.1.2:80 -m -w 1", "ipvs", syscall.ENOBUFS, "b", ReasonKernelRefused, "10.244.1.2:80"},
		{"ipvsadm -a -t 10.96.0.2:80 -r 10.244.1.3:80 -m -w 1", "ipvs", syscall.EBUSY, "b", ReasonKernelRefused, "10.244.1.3:80"},
		{"ip addr add 10.96.0.2/32 dev kube-ipvs0", "links", syscall.EADDRNOTAVAIL, "b", ReasonKernelRefused, "addr 10.96.0.2/32"},
	} {
		t.Run(fmt.Sprintf("%s %s", tc.op, tc.errno), func(t *testing.T) {
			r := newRig(Config{})
			if tc.on == "ipvs" {
				r.ipvs.FailOn(tc.op, tc.errno)
			} else {
				r.links.FailOn(tc.op, tc.errno)
			}
			d := Plan(snap, r.cfg)
			if err := r.a.Reconcile(d); err != nil {
				t.Fatalf("Reconcile = %v, want the failure kept with the Service", err)
			}
			f := r.a.Failures()
			if len(f) != 1 || f[0].Service != key("default", tc.svc) || f[0].Reason != tc.reason || !strings.Contains(f[0].Message, tc.op) {
				t.Fatalf("Failures = %v, want one of default/%s, %s, naming %q", f, tc.svc, tc.reason, tc.op)
			}
			dump := r.kernel(t).Dump()
			for _, other := range []string{"-a -t 10.96.0.1:80 -r 10.244.1.1:80", "-a -u 10.96.0.3:53 -r 10.244.1.4:53"} {
				if !strings.Contains(dump, other) {
					t.Errorf("the other Services were not programmed: no %q in\n%s", other, dump)
				}
			}
			if obs := r.a.Observed().Dump(); obs != dump {
				t.Errorf("applier memory:\n%s\nkernel:\n%s", obs, dump)
			}
			// Still refused at the first retry: the backoff doubles.
			r.pastBackoff()
			before := r.clock
			if err := r.a.ApplyServices(nil, nil); err != nil {
				t.Fatal(err)
			}
			if next := r.a.NextRetry(); !next.Equal(before.Add(2 * minRetry)) {
				t.Errorf("second retry at %v, want %v", next, before.Add(2*minRetry))
			}
			// A change of another Service does not retry it early...
			r.log.Reset()
			if err := r.a.ApplyServices([]servicecache.ServiceKey{key("default", "a")}, PlanServices(snap, []servicecache.ServiceKey{key("default", "a")}, r.cfg)); err != nil {
				t.Fatal(err)
			}
			if got := r.log.Lines(); len(got) != 0 {
				t.Errorf("ops before the backoff passed: %v", got)
			}
			// ...a change of the Service itself does.
			r.ipvs.FailOn(tc.op, nil)
			r.links.FailOn(tc.op, nil)
			b := []servicecache.ServiceKey{key("default", tc.svc)}
			if err := r.a.ApplyServices(b, PlanServices(snap, b, r.cfg)); err != nil {
				t.Fatal(err)
			}
			r.checkKernel(t, &d.State)
			if f := r.a.Failures(); len(f) != 0 {
				t.Errorf("Failures after the retry = %v", f)
			}
		})
	}
}

// When the kernel refuses every op of several Services, that is the
// node's failure (no IPVS, no permission), returned for the sync's health.
func TestEveryOpRefusedIsTheNodes(t *testing.T) {
	r := newRig(Config{})
	snap := snapshot(
		svc("default", "a", ips("10.96.0.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.1", 80, "ready"))),
		svc("default", "b", ips("10.96.0.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
	)
	for _, op := range []string{"ipvsadm -A -t 10.96.0.1:80 -s rr", "ipvsadm -A -t 10.96.0.2:80 -s rr"} {
		r.ipvs.FailOn(op, syscall.EPERM)
	}
	for _, op := range []string{"ip addr add 10.96.0.1/32 dev kube-ipvs0", "ip addr add 10.96.0.2/32 dev kube-ipvs0"} {
		r.links.FailOn(op, syscall.EPERM)
	}
	err := r.a.Reconcile(Plan(snap, r.cfg))
	if err == nil || !strings.Contains(err.Error(), "refused every operation") {
		t.Fatalf("Reconcile = %v, want the node's error", err)
	}
	// A failing op that serves no Service (the dummy link) is the node's.
	r2 := newRig(Config{})
	r2.links.FailOn("ip link add kube-ipvs0 type dummy", syscall.EOPNOTSUPP)
	if err := r2.a.Reconcile(Plan(snap, r2.cfg)); err == nil {
		t.Fatal("Reconcile without the dummy link succeeded")
	}
	if f := r2.a.Failures(); len(f) != 0 {
		t.Errorf("Failures = %v, want none (not a Service's)", f)
	}
}

// A long apply reports progress every progressOps ops (the health
// server's startup rule keeps a cold sync of thousands of Services alive).
func TestProgressDuringALongApply(t *testing.T) {
	log := &FakeLog{}
	calls := 0
	a := NewApplierWithOptions(NewFakeIPVS(log), NewFakeLinks(log), ApplierOptions{Progress: func() { calls++ }})
	var svcs []*servicecache.Service
	for i := range 1500 {
		svcs = append(svcs, svc("default", fmt.Sprintf("s%04d", i), ips(fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)),
			port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.1", 80, "ready"))))
	}
	d := Plan(snapshot(svcs...), Config{})
	if err := a.Reconcile(d); err != nil {
		t.Fatal(err)
	}
	ops := len(log.Lines())
	if want := (ops - 1) / progressOps; calls < want || calls == 0 {
		t.Errorf("%d progress calls for %d ops, want %d", calls, ops, want)
	}
}
