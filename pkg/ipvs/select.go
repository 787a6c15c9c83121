package ipvs

import (
	"slices"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Endpoint selection, as upstream's CategorizeEndpoints
// (k8s.io/kubernetes pkg/proxy/topology.go) run by each per-family proxier:
//
//   - "cluster" endpoints serve internal traffic (cluster IPs) when
//     internalTrafficPolicy is Cluster and external traffic (node ports,
//     external and load-balancer IPs) when externalTrafficPolicy is Cluster:
//     the ready endpoints, restricted by the topology hints when they are
//     usable (topology.go), or, when the family has no ready endpoint at
//     all, its serving and terminating ones.
//   - "local" endpoints serve the traffic whose policy is Local: the ready
//     endpoints on this node (NodeName == Snapshot.Node.Name) or, when there
//     is none, the serving and terminating ones on this node. Topology hints
//     never apply to them.
//
// Each family (IPv4, IPv6) is categorized on its own, hints included, as
// upstream runs one proxier per family.
//
// Which category a virtual server balances to:
//
//   - cluster IP: local if internalTrafficPolicy is Local (no fallback:
//     with no local endpoint the virtual server has no real server and the
//     traffic is refused, as the API documents and as upstream's iptables
//     and nftables modes do), cluster otherwise.
//   - node port, external IP, load-balancer IP: local if
//     externalTrafficPolicy is Local, cluster otherwise. With no local
//     endpoint the virtual server is kept with no real server, so traffic
//     reaching this node is refused rather than sent to another node, which
//     would lose the client's source address the policy exists to keep
//     (upstream's iptables and nftables modes; the load balancer's health
//     check on healthCheckNodePort steers traffic away from this node).
//     Config.LocalFallbackToCluster selects upstream IPVS mode's behaviour
//     instead (pkg/proxy/ipvs/proxier.go syncEndpoint, kubernetes PR
//     97081): the cluster endpoints, so that pods of this node can still
//     reach the Service through its external addresses.
//   - firewall mark (externalTrafficPolicy: Local, without
//     LocalFallbackToCluster, only for a family whose external selection
//     differs from the cluster one): cluster. It takes the traffic from
//     this cluster's pods and from this node to the external addresses, as
//     upstream's iptables and nftables modes send it to every endpoint
//     (fwmark.go).

// famStats is what one pass over a port's endpoints learns about one
// family, to decide how to select them.
type famStats struct {
	ready, term           int // ready; serving and terminating but not ready
	localReady, localTerm int // the same, on this node
	// Topology hints of the ready endpoints (topologyModeFromHints).
	missingNodeHint, missingZoneHint bool
	nodeHinted, zoneHinted           bool // a ready endpoint is hinted for this node / zone
}

// epFilter says which endpoints of one family a category takes.
type epFilter struct {
	v4        bool
	ready     bool // ready ones, else serving and terminating ones
	localOnly bool // only those on node
	topo      topoMode
	node      string
	zone      string
}

// portSelection is, per family (0 IPv4, 1 IPv6), the real servers of the
// internal (cluster IP) and external virtual servers of one port.
type portSelection struct {
	internal, external [2][]RealServer
	// fwmark, when not nil, are the real servers of the family's
	// firewall-mark virtual server (the cluster ones).
	fwmark [2][]RealServer
}

// usableEndpoint reports whether ep can be a real server at all.
func usableEndpoint(ep *servicecache.Endpoint) bool {
	return usableAddr(ep.Addr.Unmap()) && ep.Port != 0
}

// isServingTerminating is upstream's fallback condition. It is only used
// for families with no ready endpoint, so it need not exclude ready ones;
// it does anyway so that each endpoint is in at most one class.
func isServingTerminating(ep *servicecache.Endpoint) bool {
	return !ep.Ready && ep.Serving && ep.Terminating
}

// famIndex is 0 for IPv4, 1 for IPv6.
func famIndex(v4 bool) int {
	if v4 {
		return 0
	}
	return 1
}

// stats scans eps once, for both families.
func (p *planner) stats(eps []servicecache.Endpoint) (st [2]famStats) {
	for i := range eps {
		ep := &eps[i]
		if !usableEndpoint(ep) {
			continue
		}
		s := &st[famIndex(ep.Addr.Unmap().Is4())]
		local := p.isLocalEndpoint(ep)
		switch {
		case ep.Ready:
			s.ready++
			if local {
				s.localReady++
			}
			if len(ep.NodeHints) == 0 {
				s.missingNodeHint = true
			} else if p.node != "" && slices.Contains(ep.NodeHints, p.node) {
				s.nodeHinted = true
			}
			if len(ep.ZoneHints) == 0 {
				s.missingZoneHint = true
			} else if p.zone != "" && slices.Contains(ep.ZoneHints, p.zone) {
				s.zoneHinted = true
			}
		case isServingTerminating(ep):
			s.term++
			if local {
				s.localTerm++
			}
		}
	}
	return st
}

// isLocalEndpoint is upstream's isLocal: the endpoint names this node.
func (p *planner) isLocalEndpoint(ep *servicecache.Endpoint) bool {
	return p.node != "" && ep.NodeName == p.node
}

// keep applies the filter to one usable endpoint of any family.
func (f *epFilter) keep(ep *servicecache.Endpoint) bool {
	if ep.Addr.Unmap().Is4() != f.v4 {
		return false
	}
	if f.ready {
		if !ep.Ready {
			return false
		}
	} else if !isServingTerminating(ep) {
		return false
	}
	if f.localOnly && (f.node == "" || ep.NodeName != f.node) {
		return false
	}
	switch f.topo {
	case topoSameNode:
		return slices.Contains(ep.NodeHints, f.node)
	case topoSameZone:
		return slices.Contains(ep.ZoneHints, f.zone)
	}
	return true
}

// selectPort computes the real servers of one port's virtual servers. They
// are carved out of buf, whose remainder is returned for the next port; buf
// must have room for len(sp.Endpoints) real servers per category the port
// uses (see categories).
func (p *planner) selectPort(buf []RealServer, svc *servicecache.Service, sp *servicecache.ServicePort) (sel portSelection, rest []RealServer) {
	useCluster, useLocal := p.categories(svc, sp)
	if !useCluster && !useLocal {
		return sel, buf
	}
	st := p.stats(sp.Endpoints)
	external := externallyAccessible(svc, sp)
	for fam := range 2 {
		s := &st[fam]
		if s.ready+s.term == 0 {
			continue // nothing of this family to balance to
		}
		var cluster, local []RealServer
		if useCluster {
			f := epFilter{v4: fam == 0, ready: s.ready > 0, node: p.node, zone: p.zone}
			if f.ready {
				// Hints only choose among ready endpoints; upstream's
				// terminating fallback ignores them.
				f.topo = p.topologyMode(s)
			}
			cluster, buf = appendSelected(buf, sp.Endpoints, &f)
		}
		if useLocal && s.localReady+s.localTerm > 0 {
			f := epFilter{v4: fam == 0, ready: s.localReady > 0, localOnly: true, node: p.node}
			local, buf = appendSelected(buf, sp.Endpoints, &f)
		}
		if svc.InternalPolicyLocal {
			sel.internal[fam] = local
		} else {
			sel.internal[fam] = cluster
		}
		switch {
		case !external:
		case !svc.ExternalPolicyLocal:
			sel.external[fam] = cluster
		case len(local) > 0 || !p.fallbackToCluster:
			sel.external[fam] = local
		default:
			sel.external[fam] = cluster
		}
		if external && p.inClusterBypass(svc) && !sameRealServers(sel.external[fam], cluster) {
			sel.fwmark[fam] = cluster
		}
	}
	return sel, buf
}

// inClusterBypass: the Service's external virtual servers balance to local
// endpoints only, so traffic to them from inside the cluster needs a
// firewall-mark virtual server of its own to reach every endpoint.
func (p *planner) inClusterBypass(svc *servicecache.Service) bool {
	return svc.ExternalPolicyLocal && !p.fallbackToCluster
}

// sameRealServers compares two sorted selections by key.
func sameRealServers(a, b []RealServer) bool {
	return slices.EqualFunc(a, b, func(x, y RealServer) bool { return x.Key == y.Key })
}

// categories says which endpoint categories the virtual servers of sp use
// (upstream's UsesClusterEndpoints and UsesLocalEndpoints).
func (p *planner) categories(svc *servicecache.Service, sp *servicecache.ServicePort) (cluster, local bool) {
	external := externallyAccessible(svc, sp)
	// An externalTrafficPolicy: Local port needs the cluster endpoints for
	// its firewall-mark virtual server, or for LocalFallbackToCluster.
	cluster = !svc.InternalPolicyLocal || external
	local = svc.InternalPolicyLocal || (external && svc.ExternalPolicyLocal)
	return cluster, local
}

// externallyAccessible is upstream's ExternallyAccessible for one port: it
// has a node port, external IPs or load-balancer IPs.
func externallyAccessible(svc *servicecache.Service, sp *servicecache.ServicePort) bool {
	return sp.NodePort != 0 || len(svc.ExternalIPs) > 0 || len(svc.LoadBalancerIPs) > 0
}

// appendSelected appends the endpoints f keeps to buf and returns them,
// sorted and without duplicates, and the rest of buf.
func appendSelected(buf []RealServer, eps []servicecache.Endpoint, f *epFilter) (sel, rest []RealServer) {
	start := len(buf)
	for i := range eps {
		ep := &eps[i]
		if usableEndpoint(ep) && f.keep(ep) {
			buf = append(buf, RealServer{Key: RSKey{Addr: ep.Addr.Unmap(), Port: ep.Port}, Weight: 1, Forward: ForwardMasq})
		}
	}
	sel = buf[start:len(buf):len(buf)]
	rest = buf[len(buf):]
	return sortedUnique(sel), rest
}

// sortedUnique sorts in place (the snapshot is already sorted, so this is
// usually just a check), drops duplicate keys and caps the capacity so that
// no append can reach the next list carved out of the same buffer.
func sortedUnique(rs []RealServer) []RealServer {
	if len(rs) == 0 {
		return nil
	}
	if !slices.IsSortedFunc(rs, compareRS) {
		slices.SortStableFunc(rs, compareRS)
	}
	rs = slices.CompactFunc(rs, func(a, b RealServer) bool { return a.Key == b.Key })
	return slices.Clip(rs)
}

func compareRS(a, b RealServer) int { return a.Key.Compare(b.Key) }
