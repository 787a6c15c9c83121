// Package diff compares kube-ipvs-proxy with upstream kube-proxy v1.37.2 in
// IPVS mode as an oracle: a seeded generator of cluster states (this file),
// proxy options per round, a normalizer of each node's kernel state, and a
// comparer with an allowlist of intended differences. The pure parts run on
// the host with `go test`; the lab runner (build tag diff) applies each
// state, runs both proxies one after the other on the same kernel and
// compares their dumps (`make diff-upstream`).
package diff

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Labels and names the generated objects carry.
const (
	// ManagedBy marks the generated EndpointSlices: the EndpointSlice
	// controller leaves slices of selector-less Services with another
	// manager alone.
	ManagedBy = "diff-upstream.kube-ipvs-proxy.io"
	// OtherNode is a node name no lab node has: its endpoints are remote on
	// both nodes.
	OtherNode = "node3"
)

// Zones the generator assigns to nodes, endpoints and hints.
var Zones = []string{"zone-a", "zone-b", "zone-c"}

// State is one round's cluster: Services (without selector, so that the
// generated EndpointSlices are the only ones), their EndpointSlices, and
// the zone label of each lab node. Cluster IPs and node ports are left to
// the API server; load-balancer status is applied after creation.
type State struct {
	Namespace string
	Services  []*v1.Service
	Slices    []*discoveryv1.EndpointSlice
	// NodeZones is the topology.kubernetes.io/zone label per lab node.
	NodeZones map[string]string
}

// gen holds the random source of one round.
type gen struct {
	r *rand.Rand
}

// NewRand is a round's random source, a PCG seeded with the round's seed:
// round i of a run with SEED=s uses seed s+i, so `SEED=s+i ROUNDS=1`
// reproduces it alone.
func NewRand(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, 0x6b7562652d697076))
}

// Generate builds a round's state from r, in namespace ns, with between
// minSvc and maxSvc Services.
func Generate(r *rand.Rand, ns string, minSvc, maxSvc int) State {
	g := gen{r: r}
	st := State{Namespace: ns, NodeZones: map[string]string{
		"node1": g.pick(Zones), "node2": g.pick(Zones),
	}}
	n := minSvc + r.IntN(maxSvc-minSvc+1)
	for i := range n {
		svc := g.service(ns, fmt.Sprintf("svc-%d", i))
		st.Services = append(st.Services, svc)
		st.Slices = append(st.Slices, g.slices(svc)...)
	}
	return st
}

func (g gen) pick(s []string) string { return s[g.r.IntN(len(s))] }
func (g gen) chance(p float64) bool  { return g.r.Float64() < p }

// family says which IP families a Service asks for.
type family struct {
	policy   v1.IPFamilyPolicy
	families []v1.IPFamily
}

var familyChoices = []family{
	{v1.IPFamilyPolicySingleStack, []v1.IPFamily{v1.IPv4Protocol}},
	{v1.IPFamilyPolicySingleStack, []v1.IPFamily{v1.IPv4Protocol}},
	{v1.IPFamilyPolicySingleStack, []v1.IPFamily{v1.IPv6Protocol}},
	{v1.IPFamilyPolicyPreferDualStack, []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}},
	{v1.IPFamilyPolicyRequireDualStack, []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}},
}

var protocols = []v1.Protocol{v1.ProtocolTCP, v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}

func (g gen) service(ns, name string) *v1.Service {
	types := []v1.ServiceType{v1.ServiceTypeClusterIP, v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort,
		v1.ServiceTypeLoadBalancer, v1.ServiceTypeLoadBalancer, v1.ServiceTypeExternalName}
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1.ServiceSpec{Type: types[g.r.IntN(len(types))]},
	}
	sp := &svc.Spec
	if sp.Type == v1.ServiceTypeExternalName {
		// Both proxies skip it; it still must not upset either.
		sp.ExternalName = "example.invalid"
		sp.Ports = []v1.ServicePort{{Name: "p0", Port: 80, Protocol: v1.ProtocolTCP}}
		return svc
	}
	fam := familyChoices[g.r.IntN(len(familyChoices))]
	sp.IPFamilyPolicy = &fam.policy
	sp.IPFamilies = fam.families
	if sp.Type == v1.ServiceTypeClusterIP && g.chance(0.1) {
		sp.ClusterIP = v1.ClusterIPNone // headless: skipped by both
	}
	nports := 1 + g.r.IntN(3)
	used := map[string]bool{}
	for i := range nports {
		p := v1.ServicePort{Name: fmt.Sprintf("p%d", i), Protocol: protocols[g.r.IntN(len(protocols))]}
		for {
			p.Port = int32([]int{53, 80, 443, 8080, 9000 + g.r.IntN(100)}[g.r.IntN(5)])
			if k := fmt.Sprint(p.Protocol, p.Port); !used[k] {
				used[k] = true
				break
			}
		}
		p.TargetPort = intstr.FromInt32(8000 + int32(i))
		sp.Ports = append(sp.Ports, p)
	}
	if sp.ClusterIP != v1.ClusterIPNone && g.chance(0.3) {
		sp.SessionAffinity = v1.ServiceAffinityClientIP
		t := int32([]int{1, 60, 10800, 86400}[g.r.IntN(4)])
		sp.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: &t}}
	}
	if g.chance(0.3) {
		p := []v1.ServiceInternalTrafficPolicy{v1.ServiceInternalTrafficPolicyLocal, v1.ServiceInternalTrafficPolicyCluster}[g.r.IntN(2)]
		sp.InternalTrafficPolicy = &p
	}
	if g.chance(0.3) {
		td := v1.ServiceTrafficDistributionPreferClose
		sp.TrafficDistribution = &td
	}
	if sp.ClusterIP != v1.ClusterIPNone && g.chance(0.3) {
		sp.ExternalIPs = g.externalIPs(sp.IPFamilies)
	}
	if sp.Type == v1.ServiceTypeNodePort || sp.Type == v1.ServiceTypeLoadBalancer {
		if g.chance(0.5) {
			sp.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		} else {
			sp.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
		}
	}
	if sp.Type == v1.ServiceTypeLoadBalancer {
		if g.chance(0.2) {
			f := false
			sp.AllocateLoadBalancerNodePorts = &f
		}
		if g.chance(0.5) {
			sp.LoadBalancerSourceRanges = g.sourceRanges()
		}
		svc.Status.LoadBalancer.Ingress = g.ingress(sp.IPFamilies)
	}
	return svc
}

// externalIPs come from the documentation ranges, either family (an
// address of a family the Service lacks is ignored by both), and now and
// then a lab node's own address.
func (g gen) externalIPs(fams []v1.IPFamily) []string {
	var out []string
	for range 1 + g.r.IntN(2) {
		switch g.r.IntN(5) {
		case 0:
			out = append(out, "172.30.0.11") // node1's address
		case 1, 2:
			out = append(out, fmt.Sprintf("192.0.2.%d", 1+g.r.IntN(200)))
		default:
			out = append(out, fmt.Sprintf("2001:db8::%x", 1+g.r.IntN(200)))
		}
	}
	return dedup(out)
}

// sourceRanges mixes both families, ranges with the spaces the API server
// trims, and ranges of one family only.
func (g gen) sourceRanges() []string {
	all := []string{"10.0.0.0/8", "192.168.0.0/16", "172.30.0.0/24", " 203.0.113.0/24 ",
		"fd00::/8", "2001:db8:1::/48", "0.0.0.0/0", "::/0"}
	var out []string
	for range 1 + g.r.IntN(3) {
		out = append(out, g.pick(all))
	}
	return dedup(out)
}

func (g gen) ingress(fams []v1.IPFamily) []v1.LoadBalancerIngress {
	var out []v1.LoadBalancerIngress
	for i := range 1 + g.r.IntN(2) {
		ing := v1.LoadBalancerIngress{}
		if fams[g.r.IntN(len(fams))] == v1.IPv6Protocol {
			ing.IP = fmt.Sprintf("2001:db8:2::%x", 1+g.r.IntN(200))
		} else {
			ing.IP = fmt.Sprintf("198.51.100.%d", 1+g.r.IntN(200))
		}
		switch g.r.IntN(3) {
		case 0:
			m := v1.LoadBalancerIPModeVIP
			ing.IPMode = &m
		case 1:
			m := v1.LoadBalancerIPModeProxy
			ing.IPMode = &m
		}
		if i > 0 && ing.IP == out[0].IP {
			continue
		}
		out = append(out, ing)
	}
	return out
}

func dedup(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

var nodeChoices = []string{"node1", "node2", OtherNode, ""}

// slices makes 0-3 EndpointSlices per family of the Service, with
// endpoints on node1, node2, another node or none, every combination of
// conditions (nil included), zones, hints, and now and then the same
// address in two slices.
func (g gen) slices(svc *v1.Service) []*discoveryv1.EndpointSlice {
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil
	}
	var out []*discoveryv1.EndpointSlice
	for fi, fam := range svc.Spec.IPFamilies {
		at := discoveryv1.AddressTypeIPv4
		if fam == v1.IPv6Protocol {
			at = discoveryv1.AddressTypeIPv6
		}
		nslices := g.r.IntN(4)
		var prev []discoveryv1.Endpoint
		for si := range nslices {
			es := &discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{
					Namespace: svc.Namespace, Name: fmt.Sprintf("%s-%d-%d", svc.Name, fi, si),
					Labels: map[string]string{
						discoveryv1.LabelServiceName: svc.Name,
						discoveryv1.LabelManagedBy:   ManagedBy,
					},
				},
				AddressType: at,
			}
			for _, p := range svc.Spec.Ports {
				name, proto, port := p.Name, p.Protocol, p.TargetPort.IntVal
				es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port})
			}
			for range g.r.IntN(4) {
				es.Endpoints = append(es.Endpoints, g.endpoint(at, svc.Spec.TrafficDistribution != nil))
			}
			if len(prev) > 0 && g.chance(0.3) {
				// The same address in two slices, maybe with other conditions.
				dup := prev[g.r.IntN(len(prev))]
				dup.Conditions = g.conditions()
				es.Endpoints = append(es.Endpoints, dup)
			}
			es.Endpoints = uniqueAddrs(es.Endpoints)
			prev = append(prev, es.Endpoints...)
			out = append(out, es)
		}
	}
	return out
}

// uniqueAddrs keeps the first endpoint per address: the API server
// accepts duplicates within a slice, but they are the controller's bug,
// not a state worth comparing.
func uniqueAddrs(eps []discoveryv1.Endpoint) []discoveryv1.Endpoint {
	seen := map[string]bool{}
	var out []discoveryv1.Endpoint
	for _, e := range eps {
		if !seen[e.Addresses[0]] {
			seen[e.Addresses[0]] = true
			out = append(out, e)
		}
	}
	return out
}

func (g gen) endpoint(at discoveryv1.AddressType, hints bool) discoveryv1.Endpoint {
	node := g.pick(nodeChoices)
	idx := 1 + g.r.IntN(3)
	switch node {
	case "node1":
		idx = 1
	case "node2":
		idx = 2
	case OtherNode:
		idx = 3
	}
	host := 2 + g.r.IntN(250)
	var addr netip.Addr
	if at == discoveryv1.AddressTypeIPv6 {
		addr = netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::%x", idx, host))
	} else {
		addr = netip.AddrFrom4([4]byte{10, 244, byte(idx), byte(host)})
	}
	ep := discoveryv1.Endpoint{Addresses: []string{addr.String()}, Conditions: g.conditions()}
	if node != "" {
		ep.NodeName = &node
	}
	if g.chance(0.7) {
		z := g.pick(Zones)
		ep.Zone = &z
	}
	if hints && g.chance(0.7) {
		ep.Hints = &discoveryv1.EndpointHints{}
		for range 1 + g.r.IntN(2) {
			ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: g.pick(Zones)})
		}
		if len(ep.Hints.ForZones) == 2 && ep.Hints.ForZones[0] == ep.Hints.ForZones[1] {
			ep.Hints.ForZones = ep.Hints.ForZones[:1]
		}
	}
	return ep
}

// conditions: each of ready, serving, terminating is nil, true or false.
func (g gen) conditions() discoveryv1.EndpointConditions {
	tri := func() *bool {
		switch g.r.IntN(3) {
		case 0:
			return nil
		case 1:
			t := true
			return &t
		}
		f := false
		return &f
	}
	return discoveryv1.EndpointConditions{Ready: tri(), Serving: tri(), Terminating: tri()}
}
