package guard

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// A pool of addresses where every kind of refusal is likely: loopback,
// link-local, the node's, pod addresses, the Services' own ClusterIPs,
// other Services' external IPs, and fine ones.
var pool = addrs("127.0.0.1", "::1", "169.254.1.1", "fe80::1", "172.30.0.11", "10.244.1.5", "fd00:10:244:1::5",
	"10.96.0.1", "10.96.0.2", "10.96.0.3", "fd00:10:96::1", "192.0.2.1", "192.0.2.2", "2001:db8::1", "198.51.100.1",
	"10.244.2.6", "10.244.2.7", "fd00:10:244:2::6")

func pick(r *rand.Rand, max int) []netip.Addr {
	var out []netip.Addr
	for range r.IntN(max + 1) {
		a := pool[r.IntN(len(pool))]
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func randomService(r *rand.Rand, i int) *servicecache.Service {
	svc := &servicecache.Service{Key: servicecache.ServiceKey{Namespace: "ns", Name: fmt.Sprintf("svc%02d", i)},
		ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})}}
	randomVIPs(r, svc)
	randomEndpoints(r, svc)
	return svc
}

func randomVIPs(r *rand.Rand, svc *servicecache.Service) {
	svc.ExternalIPs, svc.LoadBalancerIPs = pick(r, 2), pick(r, 1)
}

func randomEndpoints(r *rand.Rand, svc *servicecache.Service) {
	svc.Ports = nil
	for p := range r.IntN(3) {
		var eps []servicecache.Endpoint
		for _, a := range pick(r, 4) {
			eps = append(eps, servicecache.Endpoint{Addr: a, Port: 80, Ready: true})
		}
		svc.Ports = append(svc.Ports, servicecache.ServicePort{Name: fmt.Sprint(p), Port: uint16(80 + p), Endpoints: eps})
	}
}

// Guard gives Filter's result through any sequence of changes, sharing the
// same Services, and checks everything again only when a VIP changed.
func TestGuardIsFilter(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cfgs := []Config{testConfig, {ServiceCIDRs: prefixes("10.96.0.0/16")}, {AllowedCIDRs: prefixes("192.0.2.0/24")}}
	var svcs []*servicecache.Service
	for i := range 20 {
		svcs = append(svcs, randomService(r, i))
	}
	g := &Guard{}
	cfg := cfgs[0]
	node := testNode
	nextName, refused := 20, 0
	for step := range 2000 {
		svcs = slices.Clone(svcs)
		op := r.IntN(10)
		switch {
		case op < 5: // endpoints of a few Services change
			for range r.IntN(3) + 1 {
				i := r.IntN(len(svcs))
				c := *svcs[i]
				randomEndpoints(r, &c)
				svcs[i] = &c
			}
		case op == 5: // external and load-balancer IPs change
			i := r.IntN(len(svcs))
			c := *svcs[i]
			randomVIPs(r, &c)
			svcs[i] = &c
		case op == 6 && len(svcs) > 5: // a Service goes
			i := r.IntN(len(svcs))
			svcs = slices.Delete(svcs, i, i+1)
		case op == 7: // a Service comes
			svcs = append(svcs, randomService(r, nextName%100))
			nextName++
			slices.SortFunc(svcs, func(a, b *servicecache.Service) int {
				if a.Key.Less(b.Key) {
					return -1
				}
				if b.Key.Less(a.Key) {
					return 1
				}
				return 0
			})
			svcs = slices.CompactFunc(svcs, func(a, b *servicecache.Service) bool { return a.Key == b.Key })
		case op == 8: // the configuration or the node changes
			if r.IntN(2) == 0 {
				cfg = cfgs[r.IntN(len(cfgs))]
			} else {
				node.Addresses = pick(r, 2)
			}
		default: // nothing changes
		}
		snap := &servicecache.Snapshot{Services: svcs, Node: node, Changed: []servicecache.ServiceKey{{Name: "x"}}}
		before := g.full
		got, gotProbs := g.Filter(snap, cfg)
		want, wantProbs := Filter(snap, cfg)
		refused += len(wantProbs)
		if !reflect.DeepEqual(gotProbs, wantProbs) {
			t.Fatalf("step %d: problems\n%v\nwant\n%v", step, strs(gotProbs), strs(wantProbs))
		}
		if (got == snap) != (want == snap) || len(got.Services) != len(want.Services) || &got.Changed[0] != &snap.Changed[0] {
			t.Fatalf("step %d: snapshot identity or fields differ", step)
		}
		for i := range want.Services {
			if (got.Services[i] == svcs[i]) != (want.Services[i] == svcs[i]) || !reflect.DeepEqual(got.Services[i], want.Services[i]) {
				t.Fatalf("step %d: Service %d:\n%+v\nwant\n%+v", step, i, got.Services[i], want.Services[i])
			}
		}
		// An endpoint change alone is checked incrementally.
		if op < 5 && step > 0 && g.full != before {
			t.Fatalf("step %d: a full check for endpoint changes", step)
		}
	}
	if g.full > 1000 || refused < 2000 {
		t.Errorf("%d of 2000 calls checked everything, %d refusals in all: the test does not test much", g.full, refused)
	}
	t.Logf("%d of 2000 calls checked everything, %d refusals in all", g.full, refused)
}

func TestGuardEndpointChangeIsIncremental(t *testing.T) {
	snap := benchSnapshot(100, 10)
	g := &Guard{}
	_, first := g.Filter(snap, testConfig)
	if g.full != 1 || len(first) != 10 {
		t.Fatalf("first call: full %d, %d problems", g.full, len(first))
	}
	// One Service's endpoints change; another's refused endpoint goes.
	svcs := slices.Clone(snap.Services)
	for _, i := range []int{3, 0} {
		c := *svcs[i]
		c.Ports = slices.Clone(c.Ports)
		c.Ports[0].Endpoints = endpoints("10.244.1.1")
		svcs[i] = &c
	}
	next := &servicecache.Snapshot{Services: svcs, Node: snap.Node}
	got, probs := g.Filter(next, testConfig)
	if g.full != 1 {
		t.Error("an endpoint change checked every Service")
	}
	if _, want := Filter(next, testConfig); !reflect.DeepEqual(probs, want) || len(probs) != 9 {
		t.Errorf("problems %v, want %v", strs(probs), strs(want))
	}
	if got.Services[0] != svcs[0] || got.Services[3] != svcs[3] {
		t.Error("changed Services without refusals are not shared")
	}
	// A ClusterIP change checks everything again.
	c := *svcs[5]
	c.ClusterIPs = addrs("10.96.200.1")
	svcs = slices.Clone(svcs)
	svcs[5] = &c
	g.Filter(&servicecache.Snapshot{Services: svcs, Node: snap.Node}, testConfig)
	if g.full != 2 {
		t.Error("a ClusterIP change did not check every Service")
	}
}
