package ipvs

import (
	"fmt"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/benchshape"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// These benchmarks (and BenchmarkPlan10k/50k in plan_test.go) use the
// shape of `make bench` (benchshape). Run them with
//
//	go test -run '^$' -bench . -benchmem ./pkg/ipvs/

var benchSizes = benchshape.Sizes

func shapeSnapshot(n int) *servicecache.Snapshot { return benchshape.Snapshot(n) }

func benchConfig() Config { return Config{NodePortAddresses: benchshape.Node.Addresses} }

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
