package ipvs

import (
	"net/netip"
	"slices"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Two Services can claim one virtual server: the same external or
// load-balancer IP with the same port and protocol (API validation keeps
// cluster IPs and node ports apart, but the rule below covers them too).
// The kernel has room for one, so one Service keeps it: the older one
// (creationTimestamp), and of two created the same second the first by
// namespace/name. The age, not the snapshot order, decides, so that a
// Service created later cannot take an address away from one that has it,
// and a full plan (Plan) and an incremental one (PlanChanges) agree
// whichever Services they see first. The others get a Problem
// (ReasonAddressConflict) and the virtual server once the one that keeps
// it goes away or stops claiming it.

// ReasonAddressConflict is the Problem reason of a Service that claims a
// virtual server another, older Service keeps.
const ReasonAddressConflict = "AddressConflict"

// Precedes reports whether a keeps a virtual server both a and b claim:
// a is older or, created the same second, first by namespace/name. The
// iptables planner must use the same rule for the set entries of the
// address.
func Precedes(a, b *servicecache.Service) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	return a.Key.Compare(b.Key) < 0
}

// lostClaim is a virtual server a Service wanted and another one keeps.
type lostClaim struct {
	svc  servicecache.ServiceKey
	key  VSKey
	kind Kind
}

// assembly builds a Desired from the virtual servers of each Service,
// settling who keeps a virtual server two of them claim. The result does
// not depend on the order Services are added in.
type assembly struct {
	d     *Desired
	addrs []netip.Addr // to bind, with duplicates
	// snap has every Service added, for their age.
	snap *servicecache.Snapshot
	lost []lostClaim
	// rebind: a bound virtual server went to another Service, which may
	// not bind it, so addrs may hold one too many.
	rebind bool
}

// add records svc's virtual servers, less those an older Service claims.
// One it takes from a Service added before is removed from that Service's.
func (as *assembly) add(svc *servicecache.Service, vss []*VirtualServer) {
	d := as.d
	if svc == nil || len(vss) == 0 {
		return
	}
	if _, dup := d.ByService[svc.Key]; dup {
		return
	}
	kept := vss[:0]
	for _, vs := range vss {
		if had, taken := d.VirtualServers[vs.Key]; taken {
			if had.Service == svc.Key {
				continue // the Service lists the address twice: keep the first
			}
			holder := findService(as.snap, had.Service)
			if holder != nil && !Precedes(svc, holder) {
				as.lost = append(as.lost, lostClaim{svc: svc.Key, key: vs.Key, kind: vs.Kind})
				continue
			}
			as.evict(had)
		}
		d.VirtualServers[vs.Key] = vs
		kept = append(kept, vs)
		if vs.Bind {
			as.addrs = append(as.addrs, vs.Key.Addr)
		}
	}
	if len(kept) > 0 {
		d.ByService[svc.Key] = kept
	}
}

// evict takes vs away from the Service that had it.
func (as *assembly) evict(vs *VirtualServer) {
	d := as.d
	list := slices.DeleteFunc(d.ByService[vs.Service], func(o *VirtualServer) bool { return o == vs })
	if len(list) == 0 {
		delete(d.ByService, vs.Service)
	} else {
		d.ByService[vs.Service] = list
	}
	delete(d.VirtualServers, vs.Key)
	as.lost = append(as.lost, lostClaim{svc: vs.Service, key: vs.Key, kind: vs.Kind})
	as.rebind = as.rebind || vs.Bind
}

// finish sets the addresses to bind, and the Problems: those of planner p
// and one per lost claim, naming the Service that keeps the virtual
// server, all in Service order.
func (as *assembly) finish(p *planner) {
	d := as.d
	addrs := as.addrs
	if as.rebind {
		addrs = addrs[:0]
		for _, vs := range d.VirtualServers {
			if vs.Bind {
				addrs = append(addrs, vs.Key.Addr)
			}
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	d.Addresses = slices.Clip(slices.Compact(addrs))

	problems := p.problems
	if len(as.lost) > 0 {
		slices.SortFunc(as.lost, func(a, b lostClaim) int {
			if c := a.svc.Compare(b.svc); c != 0 {
				return c
			}
			return a.key.Compare(b.key)
		})
		// A Service listing the address twice loses it once.
		as.lost = slices.CompactFunc(as.lost, func(a, b lostClaim) bool { return a.svc == b.svc && a.key == b.key })
		d.Conflicts = len(as.lost)
		for _, l := range as.lost {
			problems = append(problems, as.problem(l))
		}
		// Stable: a Service's own problems stay in the order found.
		slices.SortStableFunc(problems, func(a, b Problem) int { return a.Service.Compare(b.Service) })
	}
	d.Problems = problems
}

func (as *assembly) problem(l lostClaim) Problem {
	msg := l.kind.String() + " " + l.key.String() + " is also claimed by "
	if vs := as.d.VirtualServers[l.key]; vs != nil {
		msg += vs.Service.String()
		winner, loser := findService(as.snap, vs.Service), findService(as.snap, l.svc)
		switch {
		case winner == nil || loser == nil:
		case winner.Created.Equal(loser.Created):
			msg += ", created the same second and first by namespace/name"
		default:
			msg += ", older"
		}
		msg += ", which keeps it; it is not programmed for this Service"
	} else {
		msg += "another Service, which keeps it; it is not programmed for this Service"
	}
	return Problem{Service: l.svc, Reason: ReasonAddressConflict, Message: msg}
}

// findService looks a Service up in snap, which should be sorted by key;
// should it not be (a hand-made snapshot), it searches it all.
func findService(snap *servicecache.Snapshot, key servicecache.ServiceKey) *servicecache.Service {
	if snap == nil {
		return nil
	}
	if s := snap.Service(key); s != nil {
		return s
	}
	for _, s := range snap.Services {
		if s != nil && s.Key == key {
			return s
		}
	}
	return nil
}

// contested reports whether the kind of virtual server can be claimed by
// another Service in a valid cluster: external and load-balancer IPs.
// PlanChanges looks for the other claimants of these whenever a Service
// claiming one is planned; cluster IPs and node ports are unique, so an
// incremental plan looks for others only when one is released.
func contested(k Kind) bool { return k == KindExternalIP || k == KindLoadBalancer }

// claimants returns the Services of snap, other than those in skip, that
// may claim one of keys: one of their addresses is the address of a key,
// or a node port is the port of a key on a node address. It walks every
// Service once, comparing addresses only.
func (p *planner) claimants(snap *servicecache.Snapshot, keys map[VSKey]struct{}, skip map[servicecache.ServiceKey][]*VirtualServer) []*servicecache.Service {
	var addrs []netip.Addr
	var nodePorts []VSKey
	for k := range keys {
		if !slices.Contains(addrs, k.Addr) {
			addrs = append(addrs, k.Addr)
		}
		if slices.Contains(p.nodeAddrs, k.Addr) {
			nodePorts = append(nodePorts, k)
		}
	}
	var out []*servicecache.Service
	for _, s := range snap.Services {
		if s == nil || !mayClaim(s, addrs, nodePorts) {
			continue
		}
		if _, done := skip[s.Key]; !done {
			out = append(out, s)
		}
	}
	return out
}

func mayClaim(s *servicecache.Service, addrs []netip.Addr, nodePorts []VSKey) bool {
	for _, list := range [...][]netip.Addr{s.ClusterIPs, s.ExternalIPs, s.LoadBalancerIPs} {
		for _, a := range list {
			if slices.Contains(addrs, a.Unmap()) {
				return true
			}
		}
	}
	for i := range nodePorts {
		for j := range s.Ports {
			if np := s.Ports[j].NodePort; np != 0 && np == nodePorts[i].Port {
				return true
			}
		}
	}
	return false
}

// claimsAny reports whether one of vss has one of keys.
func claimsAny(vss []*VirtualServer, keys map[VSKey]struct{}) bool {
	for _, vs := range vss {
		if _, ok := keys[vs.Key]; ok {
			return true
		}
	}
	return false
}
