package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Benchmarks with the shape of `make bench`: n Services with one TCP port
// and 5 ready endpoints, every 5th a NodePort. Run them with
//
//	go test -run '^$' -bench . -benchmem ./pkg/iptables/

var benchSizes = []int{10000, 50000}

func shapeSnapshot(n int) *servicecache.Snapshot {
	svcs := make([]*servicecache.Service, n)
	for i := range svcs {
		eps := make([]servicecache.Endpoint, 5)
		for j := range eps {
			k := i*5 + j
			eps[j] = servicecache.Endpoint{Addr: netip.AddrFrom4([4]byte{10, byte(128 + k>>16), byte(k >> 8), byte(k)}),
				Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}
		}
		var nodePort uint16
		typ := v1.ServiceTypeClusterIP
		if i%5 == 0 {
			nodePort, typ = uint16(30000+i/5%2768), v1.ServiceTypeNodePort
		}
		svcs[i] = &servicecache.Service{
			Key:        servicecache.ServiceKey{Namespace: fmt.Sprintf("ns%03d", i%100), Name: fmt.Sprintf("svc%06d", i)},
			Type:       typ,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:      []servicecache.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: nodePort, Endpoints: eps}},
		}
	}
	// Sorted by key, as the service cache hands them out.
	sortServices(svcs)
	return &servicecache.Snapshot{Services: svcs, Node: servicecache.Node{Name: "node-a", Addresses: []netip.Addr{netip.MustParseAddr("172.30.0.11")}}}
}

func sortServices(svcs []*servicecache.Service) {
	slices.SortFunc(svcs, func(a, b *servicecache.Service) int {
		switch {
		case a.Key.Less(b.Key):
			return -1
		case b.Key.Less(a.Key):
			return 1
		}
		return 0
	})
}

func shapeConfig() Config {
	return Config{Families: []Family{IPv4}, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		LocalAddresses: []netip.Addr{netip.MustParseAddr("172.30.0.11")}}
}

// The ipset entries and chains of every Service, planned on every sync.
func BenchmarkPlan(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			snap, cfg := shapeSnapshot(n), shapeConfig()
			b.ReportAllocs()
			for b.Loop() {
				Plan(snap, cfg)
			}
		})
	}
}

// Applying a plan that changes nothing: the diff against the sets and
// chains kept since the last apply.
func BenchmarkApplyNoChange(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			d := Plan(shapeSnapshot(n), shapeConfig())
			a := &Applier{IPSet: NewFakeIPSet(), Tables: map[Family]Tables{IPv4: NewFakeTables()}}
			if _, err := a.Apply(d); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Apply(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The same between full resyncs: diffed against the applier's memory, no
// listing of sets or tables.
func BenchmarkApplyIncrementalNoChange(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			d := Plan(shapeSnapshot(n), shapeConfig())
			a := &Applier{IPSet: NewFakeIPSet(), Tables: map[Family]Tables{IPv4: NewFakeTables()}}
			if _, err := a.Apply(d); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.ApplyIncremental(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
