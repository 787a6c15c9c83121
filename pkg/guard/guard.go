// Package guard drops the Service addresses the proxy must not program,
// before the planners see them:
//
//   - External and load-balancer IPs that would take over traffic meant
//     for something else (CVE-2020-8554): the node's own addresses (its
//     Node object's), pod and Service addresses, loopback, link-local,
//     unspecified and multicast addresses, and, when an allowlist is
//     configured, any address outside it.
//   - Endpoint addresses that would make the node forward Service traffic
//     where an endpoint has no business sending it (CVE-2021-25740):
//     loopback, link-local, unspecified and multicast addresses, and the
//     addresses of Services themselves.
//
// A refused address is dropped from its Service only; the rest of the
// Service is programmed as usual. Each refusal comes back as a Problem the
// caller logs and records as a Warning Event on the Service.
//
// Filter is pure and looks at every Service: the VIPs an endpoint is
// checked against are those of all Services (and the iptables/ipset plan
// covers all Services anyway). Guard gives the same result for the sync
// loop at the cost of the changed Services only, as long as no VIP
// changed.
package guard

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Config is what Filter checks addresses against, besides the fixed ranges
// (loopback, link-local, unspecified, multicast) and the snapshot itself
// (the Node's addresses and pod CIDRs, every Service's ClusterIPs).
type Config struct {
	// AllowedCIDRs is --external-ip-allowed-cidrs: when not empty,
	// external and load-balancer IPs outside these ranges are refused.
	// It never allows an address refused for another reason.
	AllowedCIDRs []netip.Prefix
	// ClusterCIDRs is --cluster-cidr: pod addresses, refused as external
	// and load-balancer IPs.
	ClusterCIDRs []netip.Prefix
	// ServiceCIDRs is --service-cidr: refused as external and
	// load-balancer IPs and as endpoint addresses. Without it only the
	// ClusterIPs in use are refused.
	ServiceCIDRs []netip.Prefix
}

// Problem is an address Filter dropped from a Service.
type Problem struct {
	Service servicecache.ServiceKey
	// Reason is a short CamelCase word, the Event's reason.
	Reason string
	// Message names the address and why it was refused.
	Message string
}

func (p Problem) String() string { return p.Service.String() + ": " + p.Message }

// Problem reasons.
const (
	ReasonExternalIPRefused      = "ExternalIPRefused"
	ReasonLoadBalancerIPRefused  = "LoadBalancerIPRefused"
	ReasonEndpointAddressRefused = "EndpointAddressRefused"
)

// Filter returns snap without the addresses the proxy refuses to program,
// and a Problem per refused address of each Service, in Service order (an
// endpoint address is reported once per Service, whatever the number of
// ports it backs).
//
// snap is not modified. The result shares every Service that lost nothing
// (the same pointer), and a changed Service is a copy; Node, Changed and
// TriggerTimes are snap's. When nothing is refused the result is snap
// itself.
func Filter(snap *servicecache.Snapshot, cfg Config) (*servicecache.Snapshot, []Problem) {
	f := newFilter(snap, cfg)
	var out []*servicecache.Service
	var problems []Problem
	for i, svc := range snap.Services {
		c, probs := f.service(svc)
		if c == svc {
			continue
		}
		if out == nil {
			out = slices.Clone(snap.Services)
		}
		out[i] = c
		problems = append(problems, probs...)
	}
	return withServices(snap, out), problems
}

// withServices is snap with services, or snap itself when services is nil.
func withServices(snap *servicecache.Snapshot, services []*servicecache.Service) *servicecache.Snapshot {
	if services == nil {
		return snap
	}
	res := *snap
	res.Services = services
	return &res
}

type vipKind uint8

const (
	vipCluster vipKind = iota
	vipExternal
	vipLoadBalancer
)

func (k vipKind) String() string {
	switch k {
	case vipExternal:
		return "an external IP"
	case vipLoadBalancer:
		return "a load-balancer IP"
	}
	return "a ClusterIP"
}

// vip is the first Service (in snapshot order) with an address.
type vip struct {
	svc  *servicecache.Service
	kind vipKind
}

type filter struct {
	cfg      Config
	node     servicecache.Node
	nodeAddr map[netip.Addr]bool
	vips     map[netip.Addr]vip
}

// newFilter indexes the addresses the Services are checked against: the
// node's, and the VIPs (every ClusterIP, then the external and
// load-balancer IPs that are accepted).
func newFilter(snap *servicecache.Snapshot, cfg Config) *filter {
	f := &filter{cfg: cfg, node: snap.Node,
		nodeAddr: make(map[netip.Addr]bool, len(snap.Node.Addresses)),
		vips:     make(map[netip.Addr]vip, len(snap.Services)+len(snap.Services)/4)}
	for _, a := range snap.Node.Addresses {
		f.nodeAddr[a.Unmap()] = true
	}
	for _, svc := range snap.Services {
		for _, a := range svc.ClusterIPs {
			f.addVIP(a, svc, vipCluster)
		}
	}
	// An external IP may equal another Service's (on other ports), not a
	// ClusterIP: those are all in by now, so whether an external IP is
	// accepted does not depend on the order of Services.
	for _, svc := range snap.Services {
		for _, a := range svc.ExternalIPs {
			if f.vipRefused(a) == "" {
				f.addVIP(a, svc, vipExternal)
			}
		}
		for _, a := range svc.LoadBalancerIPs {
			if f.vipRefused(a) == "" {
				f.addVIP(a, svc, vipLoadBalancer)
			}
		}
	}
	return f
}

// addVIP records the first Service with an address.
func (f *filter) addVIP(a netip.Addr, svc *servicecache.Service, kind vipKind) {
	a = a.Unmap()
	if _, ok := f.vips[a]; !ok {
		f.vips[a] = vip{svc: svc, kind: kind}
	}
}

// service returns svc without its refused addresses (svc itself when none
// is) and a problem per refused address. It depends on svc and the
// filter's indexes only.
func (f *filter) service(svc *servicecache.Service) (*servicecache.Service, []Problem) {
	if f.vipsOK(svc.ExternalIPs) && f.vipsOK(svc.LoadBalancerIPs) && f.endpointsOK(svc) {
		return svc, nil
	}
	c := *svc
	var problems []Problem
	c.ExternalIPs, problems = f.externalIPs(svc.Key, svc.ExternalIPs, ReasonExternalIPRefused, "external IP", problems)
	c.LoadBalancerIPs, problems = f.externalIPs(svc.Key, svc.LoadBalancerIPs, ReasonLoadBalancerIPRefused, "load-balancer IP", problems)
	c.Ports, problems = f.endpoints(svc, problems)
	return &c, problems
}

func (f *filter) vipsOK(list []netip.Addr) bool {
	for _, a := range list {
		if f.vipRefused(a) != "" {
			return false
		}
	}
	return true
}

// externalIPs returns the accepted addresses of list (a Service's external
// or load-balancer IPs), list itself when all are, adding a problem per
// refused one.
func (f *filter) externalIPs(key servicecache.ServiceKey, list []netip.Addr, reason, what string, problems []Problem) ([]netip.Addr, []Problem) {
	var kept []netip.Addr
	for i, a := range list {
		why := f.vipRefused(a)
		if why == "" {
			if kept != nil {
				kept = append(kept, a)
			}
			continue
		}
		if kept == nil {
			kept = append(make([]netip.Addr, 0, len(list)-1), list[:i]...)
		}
		problems = append(problems, Problem{Service: key, Reason: reason, Message: fmt.Sprintf(
			"%s %s not programmed: it is %s. External and load-balancer IPs may not take over traffic meant for the node, pods or Services (CVE-2020-8554)",
			what, a, why)})
	}
	if kept == nil {
		return list, problems
	}
	if len(kept) == 0 {
		return nil, problems
	}
	return kept, problems
}

// vipRefused says why a cannot be an external or load-balancer IP, or ""
// when it can.
func (f *filter) vipRefused(a netip.Addr) string {
	a = a.Unmap()
	if why := specialRefused(a); why != "" {
		return why
	}
	if f.nodeAddr[a] {
		return "an address of this node"
	}
	if p, ok := containing(f.cfg.ClusterCIDRs, a); ok {
		return "in the cluster CIDR " + p.String() + " (pod addresses)"
	}
	if p, ok := containing(f.node.PodCIDRs, a); ok {
		return "in this node's pod CIDR " + p.String()
	}
	if p, ok := containing(f.cfg.ServiceCIDRs, a); ok {
		return "in the Service CIDR " + p.String()
	}
	if v, ok := f.vips[a]; ok && v.kind == vipCluster {
		return "the ClusterIP of Service " + v.svc.Key.String()
	}
	if len(f.cfg.AllowedCIDRs) > 0 {
		if _, ok := containing(f.cfg.AllowedCIDRs, a); !ok {
			return "outside the ranges this proxy allows (--external-ip-allowed-cidrs " + prefixList(f.cfg.AllowedCIDRs) + ")"
		}
	}
	return ""
}

// endpointRefused says why a cannot be an endpoint address, or "" when it
// can.
func (f *filter) endpointRefused(a netip.Addr) string {
	a = a.Unmap()
	if why := specialRefused(a); why != "" {
		return why
	}
	if v, ok := f.vips[a]; ok {
		return v.kind.String() + " of Service " + v.svc.Key.String()
	}
	if p, ok := containing(f.cfg.ServiceCIDRs, a); ok {
		return "in the Service CIDR " + p.String()
	}
	return ""
}

// specialRefused covers the ranges refused everywhere.
func specialRefused(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "not a valid address"
	case a.IsUnspecified():
		return "the unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a.IsMulticast():
		return "a multicast address"
	}
	return ""
}

// endpointsOK reports whether every endpoint address of svc is accepted:
// the common case, which allocates nothing.
func (f *filter) endpointsOK(svc *servicecache.Service) bool {
	for i := range svc.Ports {
		for j := range svc.Ports[i].Endpoints {
			if f.endpointRefused(svc.Ports[i].Endpoints[j].Addr) != "" {
				return false
			}
		}
	}
	return true
}

// endpoints returns svc's ports without the refused endpoints (svc.Ports
// itself when none is), adding a problem per refused address.
func (f *filter) endpoints(svc *servicecache.Service, problems []Problem) ([]servicecache.ServicePort, []Problem) {
	ports, cloned := svc.Ports, false
	var refused []netip.Addr
	for i := range svc.Ports {
		eps := svc.Ports[i].Endpoints
		var kept []servicecache.Endpoint
		for j, ep := range eps {
			why := f.endpointRefused(ep.Addr)
			if why == "" {
				if kept != nil {
					kept = append(kept, ep)
				}
				continue
			}
			if kept == nil {
				kept = append(make([]servicecache.Endpoint, 0, len(eps)-1), eps[:j]...)
			}
			if !slices.Contains(refused, ep.Addr) {
				refused = append(refused, ep.Addr)
				problems = append(problems, Problem{Service: svc.Key, Reason: ReasonEndpointAddressRefused, Message: fmt.Sprintf(
					"endpoint address %s not used: it is %s. Endpoints may not point at loopback, link-local, unspecified, multicast or Service addresses (CVE-2021-25740)",
					ep.Addr, why)})
			}
		}
		if kept == nil {
			continue
		}
		if len(kept) == 0 {
			kept = nil
		}
		if !cloned {
			ports, cloned = slices.Clone(svc.Ports), true
		}
		ports[i].Endpoints = kept
	}
	return ports, problems
}

// containing returns the first prefix of list holding a.
func containing(list []netip.Prefix, a netip.Addr) (netip.Prefix, bool) {
	for _, p := range list {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func prefixList(list []netip.Prefix) string {
	s := make([]string, len(list))
	for i, p := range list {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
