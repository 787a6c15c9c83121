package guard

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Filter runs on every sync over every Service. These benchmarks use the
// shape of the ipvs and iptables ones (n Services with one TCP port and 5
// ready endpoints, every 5th a NodePort), with every 10th Service also
// holding an external IP and every 10th a load-balancer IP. Run them with
//
//	go test -run '^$' -bench . -benchmem ./pkg/guard/

func benchService(i int) *servicecache.Service {
	eps := make([]servicecache.Endpoint, 5)
	for j := range eps {
		n := i*5 + j
		eps[j] = servicecache.Endpoint{Addr: netip.AddrFrom4([4]byte{10, byte(128 + n>>16), byte(n >> 8), byte(n)}),
			Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}
	}
	svc := &servicecache.Service{
		Key:        servicecache.ServiceKey{Namespace: fmt.Sprintf("ns%03d", i%100), Name: fmt.Sprintf("svc%06d", i)},
		Type:       v1.ServiceTypeClusterIP,
		ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
		Ports:      []servicecache.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, Endpoints: eps}},
	}
	if i%5 == 0 {
		svc.Type, svc.Ports[0].NodePort = v1.ServiceTypeNodePort, uint16(30000+i/5%2768)
	}
	if i%10 == 1 {
		svc.ExternalIPs = []netip.Addr{netip.AddrFrom4([4]byte{192, 0, byte(i >> 8), byte(i)})}
	}
	if i%10 == 2 {
		svc.Type = v1.ServiceTypeLoadBalancer
		svc.LoadBalancerIPs = []netip.Addr{netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})}
	}
	return svc
}

func benchSnapshot(n int, refusedEvery int) *servicecache.Snapshot {
	svcs := make([]*servicecache.Service, n)
	for i := range svcs {
		svcs[i] = benchService(i)
		if refusedEvery > 0 && i%refusedEvery == 0 {
			svcs[i].Ports[0].Endpoints[4].Addr = netip.MustParseAddr("127.0.0.1")
		}
	}
	slices.SortFunc(svcs, func(a, b *servicecache.Service) int {
		if a.Key.Less(b.Key) {
			return -1
		}
		return 1
	})
	return &servicecache.Snapshot{Services: svcs, Node: servicecache.Node{Name: "node-a", Addresses: []netip.Addr{netip.MustParseAddr("172.30.0.11")}}}
}

func BenchmarkFilter(b *testing.B) {
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
		AllowedCIDRs: []netip.Prefix{netip.MustParsePrefix("192.0.0.0/16"), netip.MustParsePrefix("198.51.0.0/16")}}
	for _, n := range []int{10000, 50000} {
		for _, c := range []struct {
			name  string
			every int
		}{{"nothing-refused", 0}, {"1pct-refused", 100}} {
			b.Run(fmt.Sprintf("services=%d/%s", n, c.name), func(b *testing.B) {
				snap := benchSnapshot(n, c.every)
				b.ReportAllocs()
				for b.Loop() {
					Filter(snap, cfg)
				}
			})
		}
	}
}

// The sync loop's case: Guard over a snapshot in which one Service's
// endpoints changed since the last sync.
func BenchmarkGuardOneEndpointChange(b *testing.B) {
	cfg := Config{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	for _, n := range []int{10000, 50000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap := benchSnapshot(n, 100)
			// Two snapshots that differ in one Service, alternated.
			other := *snap
			other.Services = slices.Clone(snap.Services)
			c := *other.Services[n/2]
			c.Ports = slices.Clone(c.Ports)
			c.Ports[0].Endpoints = c.Ports[0].Endpoints[1:]
			other.Services[n/2] = &c
			snaps := []*servicecache.Snapshot{snap, &other}
			g := &Guard{}
			g.Filter(snap, cfg)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				g.Filter(snaps[i%2], cfg)
			}
			if g.full != 1 {
				b.Fatalf("%d full checks", g.full)
			}
		})
	}
}
