package guard

import (
	"slices"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Guard is Filter with a memory of the last call, for the sync loop: the
// result is always Filter's, but when no VIP changed (no Service came or
// went, no ClusterIP, external or load-balancer IP changed, the same
// Config and node addresses) only the Services that are new values since
// the last call are checked again. Endpoint changes, the common case on a
// large cluster, so cost a walk over two slices of pointers instead of a
// look at every endpoint.
//
// It relies on snapshots sharing the *Service of an unchanged Service (a
// Service is never mutated; a change is a new value). A Guard is not safe
// for concurrent use.
type Guard struct {
	f    *filter
	cfg  Config
	node servicecache.Node
	// in are the Services of the last call's snapshot, and out and
	// problems what became of each (out[i] == in[i] when nothing was
	// refused).
	in       []*servicecache.Service
	out      []*servicecache.Service
	problems [][]Problem

	// full counts the calls that checked every Service, for tests.
	full int
}

// Filter is Filter(snap, cfg).
func (g *Guard) Filter(snap *servicecache.Snapshot, cfg Config) (*servicecache.Snapshot, []Problem) {
	if !g.reusable(snap, cfg) {
		g.full++
		g.f, g.cfg, g.node = newFilter(snap, cfg), cfg, snap.Node
		g.out = make([]*servicecache.Service, len(snap.Services))
		g.problems = make([][]Problem, len(snap.Services))
		for i, svc := range snap.Services {
			g.out[i], g.problems[i] = g.f.service(svc)
		}
	} else {
		// Same length, same keys in the same order, same VIPs: only the
		// Services that are new values need a look.
		for i, svc := range snap.Services {
			if svc != g.in[i] {
				g.out[i], g.problems[i] = g.f.service(svc)
			}
		}
	}
	g.in = snap.Services

	var services []*servicecache.Service
	var problems []Problem
	for i, svc := range snap.Services {
		if g.out[i] == svc {
			continue
		}
		if services == nil {
			services = slices.Clone(g.out)
		}
		problems = append(problems, g.problems[i]...)
	}
	return withServices(snap, services), problems
}

// reusable reports whether the last call's indexes hold for snap and cfg:
// every Service that is a new value keeps its key and its VIPs.
func (g *Guard) reusable(snap *servicecache.Snapshot, cfg Config) bool {
	if g.f == nil || len(snap.Services) != len(g.in) || !sameConfig(cfg, g.cfg) ||
		!slices.Equal(snap.Node.Addresses, g.node.Addresses) || !slices.Equal(snap.Node.PodCIDRs, g.node.PodCIDRs) {
		return false
	}
	for i, svc := range snap.Services {
		if old := g.in[i]; svc != old && (svc.Key != old.Key || !slices.Equal(svc.ClusterIPs, old.ClusterIPs) ||
			!slices.Equal(svc.ExternalIPs, old.ExternalIPs) || !slices.Equal(svc.LoadBalancerIPs, old.LoadBalancerIPs)) {
			return false
		}
	}
	return true
}

func sameConfig(a, b Config) bool {
	return slices.Equal(a.AllowedCIDRs, b.AllowedCIDRs) &&
		slices.Equal(a.ClusterCIDRs, b.ClusterCIDRs) && slices.Equal(a.ServiceCIDRs, b.ServiceCIDRs)
}
