package ipvs

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// digestingIPVS is a FakeIPVS with a Digest, counted, as the kernel reader
// has one.
type digestingIPVS struct {
	*FakeIPVS
	digests int
}

func (d *digestingIPVS) Digest() (uint64, error) {
	d.digests++
	vss, err := d.FakeIPVS.Services()
	if err != nil {
		return 0, err
	}
	return digestServices(vss), nil
}

func TestResync(t *testing.T) {
	web := VSKey{Addr: ip("10.96.0.20"), Port: 80, Proto: ProtoTCP}
	snap := snapshot(
		svc("default", "web", ips("10.96.0.20"), port("http", v1.ProtocolTCP, 80, 30080, ep("10.244.1.2", 8080, "ready"), ep("10.244.1.3", 8080, "ready"))),
		svc("default", "dns", ips("10.96.0.10"), port("dns", v1.ProtocolUDP, 53, 0, ep("10.244.1.4", 53, "ready"))),
	)
	// full: the resync reconciles in full (it digests first only when the
	// last Reconcile found nothing to do); else it only digests.
	tests := []struct {
		name string
		// clean: a second Reconcile found nothing to do before the resync.
		clean  bool
		change func(t *testing.T, r *rig, ipvs *digestingIPVS)
		full   bool
		digest bool
		ops    bool
	}{
		{name: "nothing changed", clean: true, digest: true},
		// After ops that all succeeded, the kernel should read as the
		// applier holds it: a digest is enough.
		{name: "the last reconcile changed the kernel", clean: false, digest: true},
		{name: "virtual server deleted outside", clean: true, digest: true, full: true, ops: true,
			change: func(t *testing.T, r *rig, k *digestingIPVS) {
				must(t, k.DeleteService(web))
			}},
		{name: "real server deleted outside", clean: true, digest: true, full: true, ops: true,
			change: func(t *testing.T, r *rig, k *digestingIPVS) {
				must(t, k.DeleteDestination(web, RSKey{ip("10.244.1.2"), 8080}))
			}},
		{name: "weight changed outside", clean: true, digest: true, full: true, ops: true,
			change: func(t *testing.T, r *rig, k *digestingIPVS) {
				must(t, k.UpdateDestination(web, RealServer{Key: RSKey{ip("10.244.1.2"), 8080}, Weight: 0, Forward: ForwardMasq}))
			}},
		{name: "scheduler changed outside", clean: true, digest: true, full: true, ops: true,
			change: func(t *testing.T, r *rig, k *digestingIPVS) {
				must(t, k.UpdateService(&VirtualServer{Key: web, Scheduler: "wlc"}))
			}},
		{name: "address unbound outside", clean: true, digest: true, full: true, ops: true,
			change: func(t *testing.T, r *rig, k *digestingIPVS) {
				must(t, r.links.DeleteAddress(ip("10.96.0.20")))
			}},
		{name: "foreign server added", clean: true, digest: true, full: true,
			change: func(t *testing.T, r *rig, k *digestingIPVS) {
				k.Put(&VirtualServer{Key: VSKey{Addr: ip("172.16.0.1"), Port: 80, Proto: ProtoTCP}, Scheduler: "rr"})
			}},
		{name: "a Service applied since", clean: true, full: true,
			change: func(t *testing.T, r *rig, k *digestingIPVS) {
				r.apply(t, snap, key("default", "dns"))
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(Config{})
			k := &digestingIPVS{FakeIPVS: r.ipvs}
			r.a = NewApplier(k, r.links)
			d := r.reconcile(t, snap)
			if tc.clean {
				r.reconcile(t, snap)
			}
			if tc.change != nil {
				tc.change(t, r, k)
			}
			r.log.Reset()
			k.digests = 0
			before, _ := r.ipvs.Dumps()
			done, err := r.a.Resync()
			if err != nil || !done {
				t.Fatalf("Resync: %v, %v", done, err)
			}
			after, _ := r.ipvs.Dumps()
			digested := k.digests > 0
			// A digest is one listing here; a full reconcile one more.
			full := after-before > k.digests
			if digested != tc.digest || full != tc.full {
				t.Errorf("digested %v, reconciled in full %v; want %v, %v", digested, full, tc.digest, tc.full)
			}
			if ops := r.log.Lines(); (len(ops) > 0) != tc.ops {
				t.Errorf("ops:\n%s", strings.Join(ops, "\n"))
			}
			r.checkKernel(t, &d.State, VSKey{Addr: ip("172.16.0.1"), Port: 80, Proto: ProtoTCP})

			// Whatever it found, the next resyncs find nothing and only
			// digest.
			for i := range 2 {
				r.log.Reset()
				k.digests = 0
				before, _ = r.ipvs.Dumps()
				if done, err := r.a.Resync(); err != nil || !done {
					t.Fatalf("Resync %d more: %v, %v", i+1, done, err)
				}
				after, _ = r.ipvs.Dumps()
				if len(r.log.Lines()) > 0 || k.digests != 1 || after-before != 1 {
					t.Errorf("resync %d more: ops %q, %d digests, %d listings; want none, 1, 1", i+1, r.log.Lines(), k.digests, after-before)
				}
			}
		})
	}
}

// A Reconcile that deletes and adds servers, next to another program's,
// leaves a digest the kernel then matches.
func TestResyncAfterChangesNextToForeignServers(t *testing.T) {
	r := newRig(Config{})
	k := &digestingIPVS{FakeIPVS: r.ipvs}
	r.a = NewApplier(k, r.links)
	foreign := VSKey{Addr: ip("172.16.0.1"), Port: 80, Proto: ProtoTCP}
	k.Put(&VirtualServer{Key: foreign, Scheduler: "wlc", RealServers: []RealServer{{Key: RSKey{ip("172.16.1.1"), 80}, Weight: 3}}})
	r.reconcile(t, snapshot(
		svc("default", "web", ips("10.96.0.20"), port("http", v1.ProtocolTCP, 80, 30080, ep("10.244.1.2", 8080, "ready"))),
		svc("default", "old", ips("10.96.0.30"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.9", 8080, "ready"))),
	))
	d := r.reconcile(t, snapshot(
		svc("default", "web", ips("10.96.0.20"), port("http", v1.ProtocolTCP, 80, 30080, ep("10.244.1.3", 8080, "ready"))),
		svc("default", "new", ips("10.96.0.40"), port("dns", v1.ProtocolUDP, 53, 0, ep("10.244.1.4", 53, "ready"))),
	))
	r.log.Reset()
	before, _ := r.ipvs.Dumps()
	if done, err := r.a.Resync(); err != nil || !done {
		t.Fatalf("Resync: %v, %v", done, err)
	}
	after, _ := r.ipvs.Dumps()
	if len(r.log.Lines()) > 0 || k.digests != 1 || after-before != 1 {
		t.Errorf("resync: ops %q, %d digests, %d listings; want none, 1, 1", r.log.Lines(), k.digests, after-before)
	}
	r.checkKernel(t, &d.State, foreign)
}

// Without a Digester, the applier digests a listing: drift is still found.
func TestResyncWithoutDigester(t *testing.T) {
	r := newRig(Config{})
	snap := webSnap(ep("10.244.1.2", 8080, "ready"))
	d := r.reconcile(t, snap)
	r.reconcile(t, snap)
	must(t, r.ipvs.DeleteDestination(VSKey{Addr: ip("10.96.0.20"), Port: 80, Proto: ProtoTCP}, RSKey{ip("10.244.1.2"), 8080}))
	r.log.Reset()
	if done, err := r.a.Resync(); err != nil || !done {
		t.Fatalf("Resync: %v, %v", done, err)
	}
	if got := r.log.Lines(); len(got) != 1 || !strings.HasPrefix(got[0], "ipvsadm -a -t 10.96.0.20:80 -r 10.244.1.2:8080") {
		t.Errorf("ops: %q", got)
	}
	r.checkKernel(t, &d.State)
}

// Before any Reconcile there is nothing known: the caller plans.
func TestResyncBeforeReconcile(t *testing.T) {
	r := newRig(Config{})
	if done, err := r.a.Resync(); done || err != nil {
		t.Errorf("Resync before Reconcile: %v, %v; want false, nil", done, err)
	}
}

// The digest does not depend on the listing's order, and tells apart what
// the table holds.
func TestDigest(t *testing.T) {
	rs := func(a string, w int) RealServer {
		return RealServer{Key: RSKey{ip(a), 80}, Weight: w, Forward: ForwardMasq}
	}
	vs := func(a string, sched string, rss ...RealServer) *VirtualServer {
		return &VirtualServer{Key: VSKey{Addr: ip(a), Port: 80, Proto: ProtoTCP}, Scheduler: sched, RealServers: rss}
	}
	base := []*VirtualServer{vs("10.96.0.1", "rr", rs("10.244.0.1", 1), rs("10.244.0.2", 1)), vs("fd00::1", "rr", rs("fd00:10::1", 1))}
	reordered := []*VirtualServer{vs("fd00::1", "rr", rs("fd00:10::1", 1)), vs("10.96.0.1", "rr", rs("10.244.0.2", 1), rs("10.244.0.1", 1))}
	if digestServices(base) != digestServices(reordered) {
		t.Error("the digest depends on the order")
	}
	for name, other := range map[string][]*VirtualServer{
		"weight":              {vs("10.96.0.1", "rr", rs("10.244.0.1", 0), rs("10.244.0.2", 1)), base[1]},
		"scheduler":           {vs("10.96.0.1", "wrr", rs("10.244.0.1", 1), rs("10.244.0.2", 1)), base[1]},
		"real server gone":    {vs("10.96.0.1", "rr", rs("10.244.0.1", 1)), base[1]},
		"real server moved":   {vs("10.96.0.1", "rr", rs("10.244.0.1", 1)), vs("fd00::1", "rr", rs("fd00:10::1", 1), rs("10.244.0.2", 1))},
		"virtual server gone": {base[0]},
		"mapped address":      {vs("::ffff:10.96.0.1", "rr", rs("10.244.0.1", 1), rs("10.244.0.2", 1)), base[1]},
	} {
		if digestServices(other) == digestServices(base) {
			t.Errorf("%s: same digest", name)
		}
	}
	st := &State{VirtualServers: map[VSKey]*VirtualServer{}, Addresses: ips("10.96.0.1")}
	for _, v := range base {
		st.VirtualServers[v.Key] = v
	}
	moved := &State{VirtualServers: st.VirtualServers, Addresses: ips("10.96.0.2")}
	if digestState(st) == digestState(moved) {
		t.Error("addresses do not count")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
