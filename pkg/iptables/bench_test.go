package iptables

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/benchshape"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Benchmarks with the shape of `make bench` (benchshape). Run them with
//
//	go test -run '^$' -bench . -benchmem ./pkg/iptables/

var benchSizes = benchshape.Sizes

func shapeSnapshot(n int) *servicecache.Snapshot { return benchshape.Snapshot(n) }

func shapeConfig() Config {
	return Config{Families: []Family{IPv4}, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		LocalAddresses: []netip.Addr{benchshape.NodeAddr}, NodePortIPs: []netip.Addr{benchshape.NodeAddr}}
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

// A Planner re-planning one changed Service (an endpoint added, then
// removed): an incremental sync's computing part, which must not grow with
// the cluster.
func BenchmarkPlannerOneChange(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			base, cfg := shapeSnapshot(n), shapeConfig()
			var p Planner
			p.Plan(base, cfg)
			changed := benchshape.Replace(base, benchshape.Service(n/2, 1))
			back := benchshape.Replace(changed, benchshape.Service(n/2, 0))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				snap := changed
				if i%2 == 1 {
					snap = back
				}
				p.Plan(snap, cfg)
			}
		})
	}
}
