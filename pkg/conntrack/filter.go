// Package conntrack deletes stale UDP conntrack entries, as kube-proxy does.
//
// A UDP "connection" is only a conntrack entry. While a client keeps
// sending from the same source port the entry never expires, so its packets
// keep going where the entry's first packet was sent: to an endpoint that
// is gone, or nowhere when the Service had no endpoint then. Deleting the
// entry lets the next packet be scheduled again by IPVS.
//
// As upstream kube-proxy v1.37 (pkg/proxy/conntrack.CleanStaleEntries),
// an entry is stale when its original destination is a frontend of a UDP
// Service port (cluster IP, external IP, load-balancer IP, node address and
// NodePort) and its reply source, the backend the flow was DNATed to (the
// frontend itself when it was not DNATed), is not a serving endpoint of that
// port. Traffic policies, topology and terminating state do not count:
// only flows to backends that no longer serve are cut, as for TCP.
//
// Unlike upstream, which lists the whole table and checks every UDP
// Service after every sync, the work is targeted: StaleEntries looks only
// at the Services that changed and returns Filters for the ports whose
// frontends or serving endpoints changed in a way that can leave stale
// entries; Cleaner.DeleteStale dumps the table (once per IP family a filter
// concerns, and not at all without a filter) and deletes the entries those
// filters select and nothing else. When a Service, port or address goes
// away, the entries the proxy DNATed there are deleted too: older upstream
// releases deleted every UDP entry to a deleted Service's IPs; v1.37 leaves
// them until the address is reused. NodePort entries are matched on the node addresses NodePorts
// are served on, not on the port alone, so unrelated flows to the same port
// number are never touched.
package conntrack

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Filter selects the stale entries of one Service port: entries of
// Protocol whose original destination (--orig-dst, --orig-port-dst) is one
// of Frontends and whose reply source (--reply-src, --reply-port-src) is
//
//   - not one of Backends, when Removed is false: Backends are the port's
//     serving endpoints, so flows to a removed or no-longer-serving endpoint
//     and flows recorded while the port had no endpoint go;
//   - one of Backends, when Removed is true: the frontends no longer exist
//     (the Service, the port or the address went away) and Backends are the
//     port's former endpoints, so only the flows the proxy DNATed go.
type Filter struct {
	// Service and PortName are for logs only.
	Service  servicecache.ServiceKey
	PortName string
	Protocol v1.Protocol
	// Frontends, sorted.
	Frontends []netip.AddrPort
	// Backends, sorted.
	Backends []netip.AddrPort
	Removed  bool
}

// String describes the filter as the conntrack commands it stands for.
func (f Filter) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%s conntrack -D -p %s", f.Service, f.PortName, strings.ToLower(string(f.Protocol)))
	for i, fe := range f.Frontends {
		if i > 0 {
			b.WriteString(" /")
		}
		fmt.Fprintf(&b, " --orig-dst %s --orig-port-dst %d", fe.Addr(), fe.Port())
	}
	switch {
	case f.Removed:
		b.WriteString(", only entries with")
	case len(f.Backends) > 0:
		b.WriteString(", except entries with")
	}
	for i, be := range f.Backends {
		if i > 0 {
			b.WriteString(" /")
		}
		fmt.Fprintf(&b, " --reply-src %s --reply-port-src %d", be.Addr(), be.Port())
	}
	return b.String()
}

// cleaned reports whether stale entries of a protocol are deleted. Only
// UDP, as upstream v1.37 (older releases also did SCTP; SCTP associations
// end on their own when the peer is gone, and TCP ones are reset).
func cleaned(p v1.Protocol) bool { return p == v1.ProtocolUDP }

// StaleEntries returns the filters that delete the entries left stale by
// going from old to cur, looking at the Services in changed only (keys
// present in either snapshot; others are ignored). nodePortAddrs are the
// node addresses NodePorts are served on (the IPVS planner's
// NodePortAddresses).
//
// For each cleaned port of a changed Service it returns
//
//   - a live filter (Removed false) on all its frontends when the port is
//     new (or old is nil), when a serving endpoint stopped serving, or when
//     the port got its first serving endpoint (the entries recorded while it
//     had none point at the frontend itself); otherwise on the frontends it
//     gained, if any (flows there predate the proxy serving them);
//   - a removed filter for the frontends it lost (or all of them when the
//     port or the Service is gone), unless another Service port of cur
//     serves that frontend.
//
// A nil old means nothing is known of the past (first sync after a start,
// or a full resync that wants upstream's complete reconcile): every cleaned
// port of the changed Services gets a live filter. The result is empty when
// there is nothing to delete; it is sorted by Service, port, then live
// before removed.
func StaleEntries(old, cur *servicecache.Snapshot, changed []servicecache.ServiceKey, nodePortAddrs []netip.Addr) []Filter {
	var out, removed []Filter
	for _, key := range changed {
		var o, n *servicecache.Service
		if old != nil {
			o = old.Service(key)
		}
		if cur != nil {
			n = cur.Service(key)
		}
		if o == n {
			continue // shared value (or absent from both): unchanged
		}
		if n != nil {
			for i := range n.Ports {
				np := &n.Ports[i]
				if !cleaned(np.Protocol) {
					continue
				}
				front := frontends(n, np, nodePortAddrs)
				serving := servingBackends(np)
				op := findPort(o, np.Name, np.Protocol)
				var oldFront []netip.AddrPort
				if op != nil {
					oldFront = frontends(o, op, nodePortAddrs)
				}
				// The frontends to check: all of them for a new port or
				// when a backend stopped serving, else only the new ones
				// (entries to them predate the proxy serving them there).
				check := front
				if op != nil && !mayLeaveStale(servingBackends(op), serving) {
					check = minus(front, oldFront)
				}
				if len(check) > 0 {
					out = append(out, Filter{Service: key, PortName: np.Name, Protocol: np.Protocol,
						Frontends: check, Backends: serving})
				}
				if gone := minus(oldFront, front); len(gone) > 0 {
					removed = appendRemoved(removed, key, op, gone)
				}
			}
		}
		if o != nil {
			for i := range o.Ports {
				op := &o.Ports[i]
				if cleaned(op.Protocol) && findPort(n, op.Name, op.Protocol) == nil {
					removed = appendRemoved(removed, key, op, frontends(o, op, nodePortAddrs))
				}
			}
		}
	}
	if len(removed) > 0 {
		// A frontend that moved to another Service port (a renamed port, a
		// Service recreated under another name) is that port's now; the
		// live filter, if any, deals with it.
		live := liveFrontends(cur, nodePortAddrs)
		for _, f := range removed {
			f.Frontends = slices.DeleteFunc(f.Frontends, func(fe netip.AddrPort) bool {
				return live[frontendKey{f.Protocol, fe}]
			})
			if len(f.Frontends) > 0 {
				out = append(out, f)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b Filter) int {
		if c := cmp.Compare(a.Service.Namespace, b.Service.Namespace); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Service.Name, b.Service.Name); c != 0 {
			return c
		}
		if c := cmp.Compare(a.PortName, b.PortName); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
			return c
		}
		switch {
		case a.Removed == b.Removed:
			return 0
		case b.Removed:
			return -1
		default:
			return 1
		}
	})
	return out
}

// Changed returns the keys of the Services that differ between old and cur
// (a Service is a new value when it changed), sorted; every key of cur when
// old is nil. Use it when the snapshots are not consecutive, for example
// when the last cleanup failed and cur.Changed only covers the last step.
func Changed(old, cur *servicecache.Snapshot) []servicecache.ServiceKey {
	var a, b []*servicecache.Service
	if old != nil {
		a = old.Services
	}
	if cur != nil {
		b = cur.Services
	}
	var out []servicecache.ServiceKey
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].Key.Less(b[j].Key)):
			out = append(out, a[i].Key)
			i++
		case i == len(a) || b[j].Key.Less(a[i].Key):
			out = append(out, b[j].Key)
			j++
		default:
			if a[i] != b[j] {
				out = append(out, b[j].Key)
			}
			i++
			j++
		}
	}
	return out
}

// mayLeaveStale reports whether going from the serving backends before to
// after can leave stale entries: a backend stopped serving, or the port got
// its first one.
func mayLeaveStale(before, after []netip.AddrPort) bool {
	if len(before) == 0 {
		return len(after) > 0
	}
	return len(minus(before, after)) > 0
}

func appendRemoved(out []Filter, key servicecache.ServiceKey, op *servicecache.ServicePort, gone []netip.AddrPort) []Filter {
	backends := allBackends(op)
	if len(gone) == 0 || len(backends) == 0 {
		return out // nothing was ever DNATed there
	}
	return append(out, Filter{Service: key, PortName: op.Name, Protocol: op.Protocol,
		Frontends: gone, Backends: backends, Removed: true})
}

func findPort(svc *servicecache.Service, name string, proto v1.Protocol) *servicecache.ServicePort {
	if svc == nil {
		return nil
	}
	for i := range svc.Ports {
		if svc.Ports[i].Name == name && svc.Ports[i].Protocol == proto {
			return &svc.Ports[i]
		}
	}
	return nil
}

// frontends returns the addresses the proxy serves a port on, as the IPVS
// planner does: cluster IPs, external and load-balancer IPs and node
// addresses (for a NodePort), each only in a family the Service has a
// cluster IP of. Sorted, without duplicates.
func frontends(svc *servicecache.Service, sp *servicecache.ServicePort, nodePortAddrs []netip.Addr) []netip.AddrPort {
	if sp.Port == 0 {
		return nil
	}
	var has4, has6 bool
	for _, ip := range svc.ClusterIPs {
		if ip = ip.Unmap(); ip.IsValid() && !ip.IsUnspecified() {
			has4 = has4 || ip.Is4()
			has6 = has6 || ip.Is6()
		}
	}
	var out []netip.AddrPort
	add := func(ip netip.Addr, port uint16) {
		ip = ip.Unmap()
		if ip.IsValid() && !ip.IsUnspecified() && ((ip.Is4() && has4) || (ip.Is6() && has6)) {
			out = append(out, netip.AddrPortFrom(ip, port))
		}
	}
	for _, ip := range svc.ClusterIPs {
		add(ip, sp.Port)
	}
	for _, ip := range svc.ExternalIPs {
		add(ip, sp.Port)
	}
	for _, ip := range svc.LoadBalancerIPs {
		add(ip, sp.Port)
	}
	if sp.NodePort != 0 {
		for _, ip := range nodePortAddrs {
			add(ip, sp.NodePort)
		}
	}
	return sortedUnique(out)
}

// servingBackends returns the serving endpoints of a port, as upstream
// (whatever their node, readiness or terminating state).
func servingBackends(sp *servicecache.ServicePort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ep := range sp.Endpoints {
		if ep.Serving && ep.Addr.IsValid() {
			out = append(out, netip.AddrPortFrom(ep.Addr.Unmap(), ep.Port))
		}
	}
	return sortedUnique(out)
}

// allBackends returns every endpoint of a port, serving or not.
func allBackends(sp *servicecache.ServicePort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, ep := range sp.Endpoints {
		if ep.Addr.IsValid() {
			out = append(out, netip.AddrPortFrom(ep.Addr.Unmap(), ep.Port))
		}
	}
	return sortedUnique(out)
}

// liveFrontends returns every frontend of a cleaned port in cur.
func liveFrontends(cur *servicecache.Snapshot, nodePortAddrs []netip.Addr) map[frontendKey]bool {
	live := make(map[frontendKey]bool)
	if cur == nil {
		return live
	}
	for _, svc := range cur.Services {
		for i := range svc.Ports {
			sp := &svc.Ports[i]
			if !cleaned(sp.Protocol) {
				continue
			}
			for _, fe := range frontends(svc, sp, nodePortAddrs) {
				live[frontendKey{sp.Protocol, fe}] = true
			}
		}
	}
	return live
}

type frontendKey struct {
	proto v1.Protocol
	addr  netip.AddrPort
}

func sortedUnique(s []netip.AddrPort) []netip.AddrPort {
	slices.SortFunc(s, netip.AddrPort.Compare)
	return slices.Compact(s)
}

// minus returns the elements of a (sorted) not in b (sorted).
func minus(a, b []netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, x := range a {
		if _, found := slices.BinarySearchFunc(b, x, netip.AddrPort.Compare); !found {
			out = append(out, x)
		}
	}
	return out
}
