package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/benchshape"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// The Go side of a sync (planners, guard, diffs, appliers) with fake
// kernels, at the shape of `make bench`. Run them with
//
//	go test -run '^$' -bench . -benchmem ./pkg/proxy/

// benchProxier is a proxier over fakes, after a first full sync of n
// Services.
func benchProxier(b *testing.B, n int) (*Proxier, *snapshots, *servicecache.Snapshot) {
	b.Helper()
	snaps := &snapshots{}
	local := func() ([]netip.Addr, error) { return benchshape.Node.Addresses, nil }
	p := New(Config{Families: []iptables.Family{iptables.IPv4}, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
		snaps, local, ipvs.NewApplier(ipvs.NewFakeIPVS(nil), ipvs.NewFakeLinks(nil)),
		&iptables.Applier{IPSet: iptables.NewFakeIPSet(), Tables: map[iptables.Family]iptables.Tables{iptables.IPv4: iptables.NewFakeTables()}},
		nil, Options{})
	snap := benchshape.Snapshot(n)
	snaps.queue = []*servicecache.Snapshot{snap}
	if err := p.Sync(context.Background(), true); err != nil {
		b.Fatal(err)
	}
	return p, snaps, snap
}

// One Service gains an endpoint, then loses it: an incremental sync.
func BenchmarkSyncOneChange(b *testing.B) {
	for _, n := range benchshape.Sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			p, snaps, base := benchProxier(b, n)
			changed := benchshape.Replace(base, benchshape.Service(n/2, 1))
			back := benchshape.Replace(changed, benchshape.Service(n/2, 0))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				snaps.queue = []*servicecache.Snapshot{changed}
				if i%2 == 1 {
					snaps.queue[0] = back
				}
				if err := p.Sync(context.Background(), false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The periodic full resync with nothing changed.
func BenchmarkSyncIdleFull(b *testing.B) {
	for _, n := range benchshape.Sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			p, snaps, base := benchProxier(b, n)
			idle := *base
			idle.Changed = nil
			snaps.queue = []*servicecache.Snapshot{&idle}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := p.Sync(context.Background(), true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
