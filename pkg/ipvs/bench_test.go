package ipvs

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// These benchmarks (and BenchmarkPlan10k/50k in plan_test.go) use the shape of `make bench`: n Services with one TCP
// port and 5 ready endpoints each, every 5th a NodePort, on a node with one
// address. Run them with
//
//	go test -run '^$' -bench . -benchmem ./pkg/ipvs/

var benchSizes = []int{10000, 50000}

var benchNode = servicecache.Node{Name: "node-a", Addresses: []netip.Addr{netip.MustParseAddr("172.30.0.11")}}

func shapeService(i int) *servicecache.Service {
	eps := make([]servicecache.Endpoint, 5)
	for j := range eps {
		// 10.(128+i/50)...: 5 distinct endpoints per Service.
		n := i*5 + j
		eps[j] = servicecache.Endpoint{Addr: netip.AddrFrom4([4]byte{10, byte(128 + n>>16), byte(n >> 8), byte(n)}),
			Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}
	}
	var nodePort uint16
	typ := v1.ServiceTypeClusterIP
	if i%5 == 0 {
		nodePort, typ = uint16(30000+i/5%2768), v1.ServiceTypeNodePort
	}
	return &servicecache.Service{
		Key:        servicecache.ServiceKey{Namespace: fmt.Sprintf("ns%03d", i%100), Name: fmt.Sprintf("svc%06d", i)},
		Type:       typ,
		ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
		Ports:      []servicecache.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: nodePort, Endpoints: eps}},
	}
}

func shapeSnapshot(n int) *servicecache.Snapshot {
	svcs := make([]*servicecache.Service, n)
	for i := range svcs {
		svcs[i] = shapeService(i)
	}
	s := snapshot(svcs...)
	s.Node = benchNode
	return s
}

func benchConfig() Config { return Config{NodePortAddresses: benchNode.Addresses} }

// The plan of one changed Service: an incremental sync's computing part,
// which must not grow with the cluster.
func BenchmarkPlanOneService(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap, cfg := shapeSnapshot(n), benchConfig()
			keys := []servicecache.ServiceKey{snap.Services[n/2].Key}
			b.ReportAllocs()
			for b.Loop() {
				PlanServices(snap, keys, cfg)
			}
		})
	}
}

// A full reconcile with nothing to change: read the (fake) kernel, diff
// every virtual server. The periodic resync of an idle node.
func BenchmarkReconcileIdle(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap, cfg := shapeSnapshot(n), benchConfig()
			a := NewApplier(NewFakeIPVS(nil), NewFakeLinks(nil))
			d := Plan(snap, cfg)
			if err := a.Reconcile(d); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := a.Reconcile(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// An incremental sync of one Service whose endpoint comes and goes: plan
// it, diff it against the state kept in memory, apply one real server op.
func BenchmarkApplyOneService(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap, cfg := shapeSnapshot(n), benchConfig()
			a := NewApplier(NewFakeIPVS(nil), NewFakeLinks(nil))
			if err := a.Reconcile(Plan(snap, cfg)); err != nil {
				b.Fatal(err)
			}
			i := n / 2
			full := snap.Services[i]
			less := *full
			less.Ports = []servicecache.ServicePort{full.Ports[0]}
			less.Ports[0].Endpoints = full.Ports[0].Endpoints[:4]
			keys := []servicecache.ServiceKey{full.Key}
			snaps := [2]*servicecache.Snapshot{snap, withService(snap, i, &less)}
			b.ReportAllocs()
			k := 0
			for b.Loop() {
				k ^= 1
				if err := a.ApplyServices(keys, PlanServices(snaps[k], keys, cfg)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// withService returns a copy of snap with Service i replaced.
func withService(snap *servicecache.Snapshot, i int, s *servicecache.Service) *servicecache.Snapshot {
	c := *snap
	c.Services = append([]*servicecache.Service(nil), snap.Services...)
	c.Services[i] = s
	return &c
}
