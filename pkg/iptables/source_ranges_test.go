package iptables

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
	v1 "k8s.io/api/core/v1"
)

// lbService is dual-stack load balancer number n, on port 80, with the
// given source ranges (requested: spec.loadBalancerSourceRanges was not
// empty).
func lbService(name string, n int, requested bool, ranges ...string) *servicecache.Service {
	return &servicecache.Service{
		Key: svcKey(name), Type: v1.ServiceTypeLoadBalancer,
		ClusterIPs:               ips(fmt.Sprintf("10.96.0.%d", n), fmt.Sprintf("fd00:96::%d", n)),
		LoadBalancerIPs:          ips(fmt.Sprintf("192.0.2.%d", n), fmt.Sprintf("2001:db8::%d", n)),
		LoadBalancerSourceRanges: pfxs(ranges...),
		SourceRangesRequested:    requested,
		Ports:                    []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80}},
	}
}

// sourceRangesSnapshot has one Service per case of loadBalancerSourceRanges
// (see TestPlanSourceRanges).
func sourceRangesSnapshot() *servicecache.Snapshot {
	noLB := lbService("no-lb-ip", 4, true)
	noLB.LoadBalancerIPs = nil
	v4only := lbService("v4-lb-only", 8, true, "2001:db8:5::/48")
	v4only.LoadBalancerIPs = v4only.LoadBalancerIPs[:1]
	return &servicecache.Snapshot{
		Node: servicecache.Node{Name: "node-a", Addresses: ips("192.168.10.5", "fd00:10::5")},
		Services: []*servicecache.Service{
			lbService("all-v4", 1, true, "0.0.0.0/0", "2001:db8:5::/48"),
			lbService("all-v6-only", 2, true, "::/0"),
			lbService("mixed", 3, true, "198.51.100.0/24", "2001:db8:5::/48"),
			noLB,
			lbService("none", 5, false),
			lbService("other-family", 6, true, "198.51.100.0/24"),
			lbService("unparseable", 7, true),
			v4only,
		},
	}
}

func sourceRangesConfig() Config {
	return Config{Families: []Family{IPv4, IPv6}, ClusterCIDRs: pfxs("10.244.0.0/16", "fd00:244::/56")}
}

// Ranges asked for but none usable for a family close the Service's load
// balancer IPs of that family (firewall entry, no allowed source, node
// denied) and report a ServiceProblem; a zero-length range of the family
// still opens it to all, as upstream.
func TestPlanSourceRanges(t *testing.T) {
	snap := sourceRangesSnapshot()
	d := Plan(snap, sourceRangesConfig())
	checkGolden(t, "plan/lb-source-ranges-unusable.golden", d.Dump())

	type famWant struct {
		firewalled bool // in KUBE-LOAD-BALANCER-FW
		ranges     int  // entries in KUBE-LOAD-BALANCER-SOURCE-CIDR
		nodeDenied bool // a KUBE-IPVS-OUT-FILTER rule
	}
	for _, tc := range []struct {
		name     string
		v4, v6   famWant
		problems []Family
	}{
		{"none", famWant{}, famWant{}, nil},
		{"mixed", famWant{true, 1, true}, famWant{true, 1, true}, nil},
		{"other-family", famWant{true, 1, true}, famWant{true, 0, true}, []Family{IPv6}},
		{"unparseable", famWant{true, 0, true}, famWant{true, 0, true}, []Family{IPv4, IPv6}},
		{"all-v4", famWant{}, famWant{true, 1, true}, nil},
		{"all-v6-only", famWant{true, 0, true}, famWant{}, []Family{IPv4}},
	} {
		svc := snap.Service(svcKey(tc.name))
		for i, w := range []famWant{tc.v4, tc.v6} {
			p := d.Families[i]
			lb := Entry{IP: svc.LoadBalancerIPs[i], Proto: ProtoTCP, Port: 80}
			got := famWant{
				firewalled: slices.Contains(p.Set(setLoadBalancerFW).Entries, lb),
				ranges: countFunc(p.Set(setLoadBalancerSrcCIDR).Entries, func(e Entry) bool {
					return e.IP == lb.IP && e.Port == lb.Port
				}),
				nodeDenied: slices.ContainsFunc(p.Chain(TableFilter, chainIPVSOutFilter).Rules, outFilterRule(lb).Equal),
			}
			if got != w {
				t.Errorf("%s %v: %+v, want %+v", tc.name, p.Family, got, w)
			}
		}
		var fams []Family
		for _, pr := range d.ServiceProblems {
			if pr.Service != svc.Key {
				continue
			}
			if pr.Reason != ReasonSourceRangesUnusable {
				t.Errorf("%s: reason %q", tc.name, pr.Reason)
			}
			for _, f := range []Family{IPv4, IPv6} {
				if strings.HasPrefix(pr.Message, fmt.Sprintf("loadBalancerSourceRanges has no %v range", f)) {
					fams = append(fams, f)
				}
			}
		}
		if !slices.Equal(fams, tc.problems) {
			t.Errorf("%s: problems for %v, want %v (all: %v)", tc.name, fams, tc.problems, d.ServiceProblems)
		}
	}
	// Without a load balancer IP of the family nothing is exposed, so
	// nothing to report.
	for _, pr := range d.ServiceProblems {
		switch pr.Service.Name {
		case "no-lb-ip":
			t.Errorf("problem for a Service without load balancer IPs: %v", pr)
		case "v4-lb-only":
			if !strings.Contains(pr.Message, "no IPv4 range (given 2001:db8:5::/48)") {
				t.Errorf("v4-lb-only: %q, want the family and the ranges given", pr.Message)
			}
		}
	}
	if len(d.Problems) != 0 {
		t.Errorf("string problems %q, want none: source ranges are ServiceProblems", d.Problems)
	}
}

// A Planner keeps a Service's problem while the Service does not change,
// drops it when the Service is fixed or deleted, and always agrees with
// Plan over the same snapshot.
func TestPlannerServiceProblems(t *testing.T) {
	cfg := sourceRangesConfig()
	broken := lbService("a", 1, true, "198.51.100.0/24") // no IPv6 range
	other := lbService("b", 2, false)
	snap := func(changed []string, svcs ...*servicecache.Service) *servicecache.Snapshot {
		s := &servicecache.Snapshot{Node: servicecache.Node{Name: "node-a"}, Services: svcs}
		for _, n := range changed {
			s.Changed = append(s.Changed, svcKey(n))
		}
		return s
	}
	fixed := lbService("a", 1, true, "198.51.100.0/24", "2001:db8:5::/48")
	otherChanged := lbService("b", 2, false)
	otherChanged.Ports[0].Port = 81
	steps := []struct {
		name string
		snap *servicecache.Snapshot
		want []string // Services with a problem
	}{
		{"first plan", snap(nil, broken, other), []string{"a"}},
		{"another Service changes: kept", snap([]string{"b"}, broken, otherChanged), []string{"a"}},
		{"nothing changes: kept", snap(nil, broken, otherChanged), []string{"a"}},
		{"fixed: dropped", snap([]string{"a"}, fixed, otherChanged), nil},
		{"broken again", snap([]string{"a"}, broken, otherChanged), []string{"a"}},
		{"deleted: dropped", snap([]string{"a"}, otherChanged), nil},
	}
	pl := new(Planner)
	for _, st := range steps {
		d := pl.Plan(st.snap, cfg)
		var got []string
		for _, pr := range d.ServiceProblems {
			got = append(got, pr.Service.Name)
		}
		if !slices.Equal(got, st.want) {
			t.Errorf("%s: problems of %v, want %v", st.name, got, st.want)
		}
		if want := Plan(st.snap, cfg).Dump(); d.Dump() != want {
			t.Errorf("%s: Planner and Plan differ:\n%s", st.name, lineDiff(want, d.Dump()))
		}
	}
}
