package ipvs

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/benchshape"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// claimant is a Service created at second created with cluster IP vip and
// one TCP port p, claiming external IP ext (if set) on it.
func claimant(name string, created int64, vip, ext string, p uint16, backend string) *servicecache.Service {
	s := svc("default", name, ips(vip), port("http", v1.ProtocolTCP, p, 0, ep(backend, 8080, "ready")))
	if ext != "" {
		s.ExternalIPs = ips(ext)
	}
	s.Created = time.Unix(created, 0)
	return s
}

// heldIn is what the applier holds for keys after applying d.
func heldIn(d *Desired, keys []servicecache.ServiceKey) []VSKey {
	var out []VSKey
	for _, k := range keys {
		for _, vs := range d.ByService[k] {
			out = append(out, vs.Key)
		}
	}
	slices.SortFunc(out, VSKey.Compare)
	return out
}

// TestPlanChangesAgreesWithPlan checks that an incremental plan gives each
// Service it plans what the full plan of the same snapshot gives it, with
// the same Problems, and replans the other claimants it must.
func TestPlanChangesAgreesWithPlan(t *testing.T) {
	const shared = "203.0.113.4"
	a := claimant("a", 1000, "10.96.0.1", shared, 80, "10.244.1.1")
	b := claimant("b", 2000, "10.96.0.2", shared, 80, "10.244.2.1")
	c := claimant("c", 3000, "10.96.0.3", shared, 80, "10.244.3.1")
	other := claimant("other", 500, "10.96.0.9", "", 80, "10.244.9.1")
	aAway := claimant("a", 1000, "10.96.0.1", shared, 81, "10.244.1.1")
	aNoExt := claimant("a", 1000, "10.96.0.1", "", 80, "10.244.1.1")
	bEndpoints := claimant("b", 2000, "10.96.0.2", shared, 80, "10.244.2.9")
	// b also claims a second address that d, older, holds: when b takes
	// 203.0.113.4 over, d must be planned too, to keep the other.
	bTwo := svcWith(claimant("b", 2000, "10.96.0.2", shared, 80, "10.244.2.1"),
		func(s *servicecache.Service) { s.ExternalIPs = ips(shared, "203.0.113.44") })
	d := claimant("d", 100, "10.96.0.4", "203.0.113.44", 80, "10.244.4.1")
	// A cluster IP that is the external IP of an unchanged Service.
	e := claimant("e", 4000, "10.96.0.5", "10.96.0.9", 80, "10.244.5.1")
	otherGone := snapshot(e)

	tests := []struct {
		name      string
		old, snap *servicecache.Snapshot
		changed   []servicecache.ServiceKey
		replanned []servicecache.ServiceKey
		problems  int // in the incremental plan
	}{{
		name: "owner deleted: the next oldest takes over",
		old:  snapshot(a, b, c), snap: snapshot(b, c),
		changed: []servicecache.ServiceKey{key("default", "a")}, replanned: []servicecache.ServiceKey{key("default", "b"), key("default", "c")},
		problems: 1, // c's, now naming b
	}, {
		name: "owner's port changes away",
		old:  snapshot(a, b), snap: snapshot(aAway, b),
		changed: []servicecache.ServiceKey{key("default", "a")}, replanned: []servicecache.ServiceKey{key("default", "b")},
	}, {
		name: "owner drops the external IP",
		old:  snapshot(a, b), snap: snapshot(aNoExt, b),
		changed: []servicecache.ServiceKey{key("default", "a")}, replanned: []servicecache.ServiceKey{key("default", "b")},
	}, {
		name: "a younger Service claims it: only its plan loses it",
		old:  snapshot(a), snap: snapshot(a, b),
		changed: []servicecache.ServiceKey{key("default", "b")}, replanned: []servicecache.ServiceKey{key("default", "a")},
		problems: 1,
	}, {
		name: "the loser alone changes: it knows who keeps it",
		old:  snapshot(a, b), snap: snapshot(a, bEndpoints),
		changed: []servicecache.ServiceKey{key("default", "b")}, replanned: []servicecache.ServiceKey{key("default", "a")},
		problems: 1,
	}, {
		name: "an older Service claims it: it takes it over",
		old:  snapshot(aNoExt, b), snap: snapshot(a, b),
		changed: []servicecache.ServiceKey{key("default", "a")}, replanned: []servicecache.ServiceKey{key("default", "b")},
		problems: 1,
	}, {
		name: "the Service taking over loses another address to an older one",
		old:  snapshot(a, bTwo, d), snap: snapshot(bTwo, d),
		changed: []servicecache.ServiceKey{key("default", "a")}, replanned: []servicecache.ServiceKey{key("default", "b"), key("default", "d")},
		problems: 1,
	}, {
		name: "a cluster IP released goes to the external IP claiming it",
		old:  snapshot(e, other), snap: otherGone,
		changed: []servicecache.ServiceKey{key("default", "other")}, replanned: []servicecache.ServiceKey{key("default", "e")},
	}, {
		name: "no claimant elsewhere: nothing replanned",
		old:  snapshot(a, other), snap: snapshot(aAway, other),
		changed: []servicecache.ServiceKey{key("default", "a")},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			full := Plan(tt.snap, Config{})
			part := PlanChanges(tt.snap, tt.changed, heldIn(Plan(tt.old, Config{}), tt.changed), Config{})
			if !slices.Equal(part.Replanned, tt.replanned) {
				t.Errorf("Replanned = %v, want %v", part.Replanned, tt.replanned)
			}
			if len(part.Problems) != tt.problems {
				t.Errorf("problems: %v, want %d", part.Problems, tt.problems)
			}
			planned := slices.Concat(tt.changed, part.Replanned)
			for _, k := range planned {
				if got, want := describeVSs(part.ByService[k]), describeVSs(full.ByService[k]); got != want {
					t.Errorf("%s: incremental plan\n%s\nfull plan\n%s", k, got, want)
				}
			}
			var want []Problem
			for _, p := range full.Problems {
				if slices.Contains(planned, p.Service) {
					want = append(want, p)
				}
			}
			if !slices.Equal(part.Problems, want) {
				t.Errorf("problems:\n%v\nfull plan's of the same Services:\n%v", part.Problems, want)
			}
			checkPlanInvariants(t, part)
		})
	}
}

func describeVSs(vss []*VirtualServer) string {
	var b strings.Builder
	for _, vs := range vss {
		fmt.Fprintf(&b, "%s %s %v\n", vs, vs.Kind, vs.RealServers)
	}
	return b.String()
}

// TestPlanServicesWithoutHeld: without what the changed Services held,
// nothing released is given away (the next full plan does it), but a
// claim is still settled.
func TestPlanServicesWithoutHeld(t *testing.T) {
	a := claimant("a", 1000, "10.96.0.1", "203.0.113.4", 80, "10.244.1.1")
	b := claimant("b", 2000, "10.96.0.2", "203.0.113.4", 80, "10.244.2.1")
	if d := PlanServices(snapshot(b), []servicecache.ServiceKey{key("default", "a")}, Config{}); len(d.Replanned) != 0 {
		t.Errorf("replanned %v without anything held", d.Replanned)
	}
	d := PlanServices(snapshot(a, b), []servicecache.ServiceKey{key("default", "b")}, Config{})
	if len(d.Problems) != 1 || d.Problems[0].Reason != ReasonAddressConflict || d.Problems[0].Service != key("default", "b") ||
		!strings.Contains(d.Problems[0].Message, "203.0.113.4:80/TCP") || !strings.Contains(d.Problems[0].Message, "default/a, older") {
		t.Errorf("problems: %v", d.Problems)
	}
}

// sync is an incremental sync as the proxier runs it: what the changed
// Services held, their plan with the other claimants, and its apply.
func (r *rig) sync(t *testing.T, snap *servicecache.Snapshot, changed ...servicecache.ServiceKey) *Desired {
	t.Helper()
	part := PlanChanges(snap, changed, r.a.Held(changed), r.cfg)
	if err := r.a.ApplyServices(slices.Concat(changed, part.Replanned), part); err != nil {
		t.Fatalf("ApplyServices: %v", err)
	}
	return part
}

// TestApplierConflictTakeover: the older of two Services claiming an
// external IP and port has it in the kernel, whichever sync path ran, and
// the other takes it over in the sync after the older one lets it go.
func TestApplierConflictTakeover(t *testing.T) {
	const shared = "1.2.3.4"
	vs := VSKey{Addr: ip(shared), Port: 80, Proto: ProtoTCP}
	a := claimant("a", 1000, "10.96.0.1", shared, 80, "10.244.1.1")
	b := claimant("b", 2000, "10.96.0.2", shared, 80, "10.244.2.1")
	aAway := claimant("a", 1000, "10.96.0.1", shared, 8080, "10.244.1.1")
	bKey := key("default", "b")

	type step struct {
		snap    *servicecache.Snapshot
		changed []servicecache.ServiceKey
		owner   string // the real server of 1.2.3.4:80, "" for none
		bLoses  bool   // b has an AddressConflict problem
	}
	tests := []struct {
		name  string
		start *servicecache.Snapshot
		steps []step
	}{{
		name:  "owner deleted",
		start: snapshot(a, b),
		steps: []step{{snap: snapshot(b), changed: []servicecache.ServiceKey{key("default", "a")}, owner: "10.244.2.1"}},
	}, {
		name:  "younger claimant added, then owner deleted",
		start: snapshot(a),
		steps: []step{
			{snap: snapshot(a, b), changed: []servicecache.ServiceKey{bKey}, owner: "10.244.1.1", bLoses: true},
			{snap: snapshot(b), changed: []servicecache.ServiceKey{key("default", "a")}, owner: "10.244.2.1"},
		},
	}, {
		name:  "owner's port changes away, then back",
		start: snapshot(a, b),
		steps: []step{
			{snap: snapshot(aAway, b), changed: []servicecache.ServiceKey{key("default", "a")}, owner: "10.244.2.1"},
			{snap: snapshot(a, b), changed: []servicecache.ServiceKey{key("default", "a")}, owner: "10.244.1.1", bLoses: true},
		},
	}, {
		name:  "both deleted at once",
		start: snapshot(a, b),
		steps: []step{{snap: snapshot(), changed: []servicecache.ServiceKey{key("default", "a"), bKey}}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(Config{})
			d := r.reconcile(t, tt.start)
			if got := r.kernel(t).VirtualServers[vs]; got == nil || got.RealServers[0].Key.Addr != ip("10.244.1.1") {
				t.Fatalf("after the full plan %s is %v, want a's", vs, got)
			}
			if slices.Contains(tt.start.Services, b) && (len(d.Problems) != 1 || d.Problems[0].Service != bKey) {
				t.Errorf("full plan's problems: %v", d.Problems)
			}
			for i, st := range tt.steps {
				r.log.Reset()
				part := r.sync(t, st.snap, st.changed...)
				got := ""
				if kvs := r.kernel(t).VirtualServers[vs]; kvs != nil && len(kvs.RealServers) > 0 {
					got = kvs.RealServers[0].Key.Addr.String()
				}
				if got != st.owner {
					t.Errorf("step %d: %s balances to %q, want %q\n%s", i, vs, got, st.owner, strings.Join(r.log.Lines(), "\n"))
				}
				loses := slices.ContainsFunc(part.Problems, func(p Problem) bool {
					return p.Service == bKey && p.Reason == ReasonAddressConflict
				})
				if loses != st.bLoses {
					t.Errorf("step %d: b's problem reported %v, want %v: %v", i, loses, st.bLoses, part.Problems)
				}
				// The kernel is where a full sync would put it, and one
				// finds nothing to do.
				r.checkKernel(t, &Plan(st.snap, r.cfg).State)
				r.log.Reset()
				r.reconcile(t, st.snap)
				if ops := r.log.Lines(); len(ops) != 0 {
					t.Errorf("step %d: a full sync after the incremental one did:\n%s", i, strings.Join(ops, "\n"))
				}
			}
		})
	}
}

// TestApplierTakeoverKeepsSharedAddress: the address stays bound while
// the virtual server changes hands, and goes with its last user.
func TestApplierTakeoverKeepsSharedAddress(t *testing.T) {
	r := newRig(Config{})
	a := claimant("a", 1000, "10.96.0.1", "203.0.113.4", 80, "10.244.1.1")
	b := claimant("b", 2000, "10.96.0.2", "203.0.113.4", 80, "10.244.2.1")
	r.reconcile(t, snapshot(a, b))
	r.log.Reset()
	r.sync(t, snapshot(b), key("default", "a"))
	want := []string{
		"ipvsadm -a -t 203.0.113.4:80 -r 10.244.2.1:8080 -m -w 1",
		"ipvsadm -D -t 10.96.0.1:80",
		"ipvsadm -d -t 203.0.113.4:80 -r 10.244.1.1:8080",
		"ip addr del 10.96.0.1/32 dev kube-ipvs0",
	}
	got := r.log.Lines()
	checkOrder(t, got)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ops:\n%s\nwant (in any order):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	r.log.Reset()
	r.sync(t, snapshot(), key("default", "b"))
	if k := r.kernel(t); len(k.VirtualServers) != 0 || len(k.Addresses) != 0 {
		t.Errorf("left behind:\n%s", k.Dump())
	}
}

// BenchmarkPlanChangesContested: an incremental plan of one Service with
// a load-balancer IP another, older Service claims, and of the deletion
// of the older one, among n Services: each walks every Service once.
func BenchmarkPlanChangesContested(b *testing.B) {
	for _, n := range benchSizes {
		snap, cfg := shapeSnapshot(n), benchConfig()
		lb := func(i int, created int64) *servicecache.Service {
			s := *benchshape.Service(i, 0)
			s.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("198.51.100.1")}
			s.Created = time.Unix(created, 0)
			return &s
		}
		older, younger := lb(n/3, 1000), lb(2*n/3, 2000)
		snap = benchshape.Replace(benchshape.Replace(snap, older), younger)
		b.Run(fmt.Sprintf("claim/services=%d", n), func(b *testing.B) {
			keys := []servicecache.ServiceKey{younger.Key}
			held := heldIn(Plan(snap, cfg), keys)
			b.ReportAllocs()
			for b.Loop() {
				PlanChanges(snap, keys, held, cfg)
			}
		})
		b.Run(fmt.Sprintf("release/services=%d", n), func(b *testing.B) {
			keys := []servicecache.ServiceKey{older.Key}
			held := heldIn(Plan(snap, cfg), keys)
			gone := *snap
			gone.Services = slices.DeleteFunc(slices.Clone(snap.Services), func(s *servicecache.Service) bool { return s == older })
			b.ReportAllocs()
			for b.Loop() {
				PlanChanges(&gone, keys, held, cfg)
			}
		})
	}
}

// TestConflictRandomSyncs runs random incremental syncs over Services
// sharing a few external and load-balancer IPs, as the proxier runs them
// (Held, PlanChanges, ApplyServices with the replanned Services, Problems
// replaced for those planned), and checks after each that the kernel and
// the Problems are those of a full sync.
func TestConflictRandomSyncs(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	pool := ips("203.0.113.1", "203.0.113.2", "203.0.113.3")
	// Created only changes when a Service is deleted and created again,
	// which makes it the youngest (clock is the newest creation time).
	var clock int64
	created := map[int]int64{}
	gen := func(i int) *servicecache.Service {
		p := uint16(80 + rng.IntN(2))
		s := svc("default", fmt.Sprintf("s%d", i), []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i + 1)})},
			port("http", v1.ProtocolTCP, p, 0, ep(fmt.Sprintf("10.244.%d.%d", i, rng.IntN(3)), 8080, "ready")))
		for _, a := range pool {
			switch rng.IntN(4) {
			case 0:
				s.ExternalIPs = append(s.ExternalIPs, a)
			case 1:
				s.LoadBalancerIPs = append(s.LoadBalancerIPs, a)
			}
		}
		if _, ok := created[i]; !ok {
			clock += int64(rng.IntN(2)) // ties too
			created[i] = clock
		}
		s.Created = time.Unix(created[i], 0)
		return s
	}
	const n = 6
	for run := range 40 {
		cur := map[int]*servicecache.Service{}
		clear(created)
		snapOf := func() *servicecache.Snapshot {
			var svcs []*servicecache.Service
			for _, s := range cur {
				svcs = append(svcs, s)
			}
			return snapshot(svcs...)
		}
		for i := range n {
			if rng.IntN(2) == 0 {
				cur[i] = gen(i)
			}
		}
		r := newRig(Config{})
		d := r.reconcile(t, snapOf())
		reported := map[servicecache.ServiceKey][]Problem{}
		for _, p := range d.Problems {
			reported[p.Service] = append(reported[p.Service], p)
		}
		for step := range 15 {
			var changed []servicecache.ServiceKey
			for range 1 + rng.IntN(2) {
				i := rng.IntN(n)
				changed = append(changed, key("default", fmt.Sprintf("s%d", i)))
				switch _, ok := cur[i]; {
				case ok && rng.IntN(3) == 0:
					delete(cur, i)
					delete(created, i)
				case ok && rng.IntN(4) == 0:
					// Deleted and created again between two syncs.
					delete(created, i)
					cur[i] = gen(i)
				default:
					cur[i] = gen(i)
				}
			}
			slices.SortFunc(changed, servicecache.ServiceKey.Compare)
			changed = slices.Compact(changed)
			snap := snapOf()
			part := r.sync(t, snap, changed...)
			for _, k := range slices.Concat(changed, part.Replanned) {
				delete(reported, k)
			}
			for _, p := range part.Problems {
				reported[p.Service] = append(reported[p.Service], p)
			}

			full := Plan(snap, r.cfg)
			where := fmt.Sprintf("run %d step %d (changed %v)", run, step, changed)
			k := r.kernel(t)
			if k.Dump() != full.Dump() {
				t.Fatalf("%s: kernel\n%s\nfull plan\n%s", where, k.Dump(), full.Dump())
			}
			want := map[servicecache.ServiceKey][]Problem{}
			for _, p := range full.Problems {
				want[p.Service] = append(want[p.Service], p)
			}
			if fmt.Sprint(reported) != fmt.Sprint(want) {
				t.Fatalf("%s: problems\n%v\nfull plan's\n%v", where, reported, want)
			}
		}
	}
}
