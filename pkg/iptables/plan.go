package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Config is what the planner needs besides the snapshot.
type Config struct {
	// Families to program, e.g. {IPv4} or {IPv4, IPv6}.
	Families []Family
	// ClusterCIDRs is the pod network. Traffic to a cluster IP from outside
	// it is masqueraded. Like upstream's --cluster-cidr, one prefix per
	// family is used (the first); without one, upstream's fallback applies
	// (masquerade node-originated traffic whose source is a service IP).
	ClusterCIDRs []netip.Prefix
	// NotLocal, when set for a family, are the iptables match arguments
	// for traffic that does NOT come from this cluster's pods (upstream's
	// --detect-local-mode: "! -s CIDR" for ClusterCIDR and NodeCIDR,
	// "! -i BRIDGE" for BridgeInterface, "! -i PREFIX+" for
	// InterfaceNamePrefix). It replaces the ClusterCIDRs rule.
	NotLocal map[Family][]string
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool
	// MasqueradeMark is the fwmark bit for "needs SNAT"; 0 means
	// DefaultMasqueradeMark (0x4000).
	MasqueradeMark uint32
	// NodePortIPs are the addresses NodePorts answer on, the list the
	// proxier resolves for IPVS too (servicecache.NodePortAddresses.NodePortIPs);
	// only the SCTP set lists addresses.
	NodePortIPs []netip.Addr
	// LocalAddresses are the addresses on the host's interfaces other than
	// kube-ipvs0. NodePort addresses are picked from them, and external or
	// load-balancer IPs found among them are not added to KUBE-IPVS-IPS
	// (they are not bound to kube-ipvs0).
	LocalAddresses []netip.Addr
	// NodeIPs are the node's primary IPs (one per family). A load balancer
	// source range containing it lets the node reach the load balancer IP.
	// When a family has none, the snapshot's node addresses are used.
	NodeIPs []netip.Addr
	// ExternalLocalMarks are the members of KUBE-EXTERNAL-LOCAL-MARK, both
	// families mixed: each external address (IP, Proto, Port) of an
	// externalTrafficPolicy: Local Service port with the firewall mark
	// (SkbMark/SkbMarkMask) of the IPVS virtual server that takes its
	// traffic from inside the cluster (ipvs.Applier.MarkEntries). A change
	// re-plans nothing else.
	ExternalLocalMarks []Entry
}

// Desired is everything the applier makes true: per family, the content of
// every ipset and every chain, and the jumps into them.
type Desired struct {
	Families []*FamilyPlan
	// Problems lists input that was skipped, with the reason.
	Problems []string
	// ServiceProblems lists what is wrong with a Service and was planned
	// around (fail closed), sorted by Service, each Service's in family
	// order: the caller logs them and records Warning Events.
	ServiceProblems []ServiceProblem

	// owners fills in RefusedEntry.Services for one family; nil when
	// the plan cannot tell.
	owners func(Family, []RefusedEntry)
}

// ServiceProblem is something wrong with one Service that the planner
// worked around.
type ServiceProblem struct {
	Service servicecache.ServiceKey
	// Reason is a short CamelCase word, the Event's reason.
	Reason  string
	Message string
}

// ReasonSourceRangesUnusable: the Service asked for
// loadBalancerSourceRanges, but none of them is usable for a family of
// its load balancer IPs; those IPs take no traffic from outside.
const ReasonSourceRangesUnusable = "SourceRangesUnusable"

// FamilyPlan is the desired state of one IP family.
type FamilyPlan struct {
	Family Family
	Sets   []SetPlan // every set of the family, in creation order
	Chains []Chain   // every chain we own, nat first, each complete
	Jumps  []Jump
}

// SetPlan is one set with its complete, sorted content.
type SetPlan struct {
	Spec    SetSpec
	Entries []Entry
}

// Set returns the plan of the set with the given upstream (IPv4) name.
func (p *FamilyPlan) Set(base string) *SetPlan {
	name := setName(base, p.Family)
	for i := range p.Sets {
		if p.Sets[i].Spec.Name == name {
			return &p.Sets[i]
		}
	}
	return nil
}

// Chain returns the plan of one chain, or nil.
func (p *FamilyPlan) Chain(table Table, name string) *Chain {
	for i := range p.Chains {
		if p.Chains[i].Table == table && p.Chains[i].Name == name {
			return &p.Chains[i]
		}
	}
	return nil
}

// Plan computes the desired ipsets and chains. It is pure: same input, same
// output, no system access. Invalid input is skipped and reported in
// Desired.Problems. It is a Planner used once; the proxier keeps a Planner
// so that a sync re-plans only the Services that changed.
func Plan(snap *servicecache.Snapshot, cfg Config) *Desired {
	return new(Planner).Plan(snap, cfg)
}

// familyBuilder computes one Service's share of a family's set entries
// (servicePort), and the family's chains from which sets are non-empty
// (chains).
type familyBuilder struct {
	f   Family
	cfg *Config

	nodeName    string
	nodeIP      netip.Addr          // for load balancer source ranges
	nodePortIPs []netip.Addr        // addresses NodePorts answer on
	local       map[netip.Addr]bool // addresses not bound to kube-ipvs0
	clusterCIDR netip.Prefix        // invalid when none for the family
	mark        uint32

	// part collects the Service being planned.
	part *servicePart
	// counts: how many Service parts hold each entry, by upstream set
	// name; outFilter: the KUBE-IPVS-OUT-FILTER rules (load balancers the
	// node itself may not reach), sorted. Both read by chains.
	counts    map[string]map[Entry]int
	outFilter []Rule
	// markEntries is how many entries KUBE-EXTERNAL-LOCAL-MARK has.
	markEntries int
}

// servicePart is what one Service puts in a family's sets.
type servicePart struct {
	entries     []setEntry
	denied      []Entry // load balancer entries the node may not reach
	problems    []string
	svcProblems []ServiceProblem
}

type setEntry struct {
	base string // upstream (IPv4) set name
	e    Entry
}

// newFamilyBuilder derives the node's settings for family f; problems with
// them are appended to problems.
func newFamilyBuilder(f Family, node servicecache.Node, cfg *Config, problems *[]string) *familyBuilder {
	b := &familyBuilder{
		f:        f,
		cfg:      cfg,
		nodeName: node.Name,
		local:    map[netip.Addr]bool{},
		mark:     cfg.MasqueradeMark,
		counts:   map[string]map[Entry]int{},
	}
	if b.mark == 0 {
		b.mark = DefaultMasqueradeMark
	}
	for _, p := range cfg.ClusterCIDRs {
		if !f.HasPrefix(p) {
			continue
		}
		if b.clusterCIDR.IsValid() {
			*problems = append(*problems, f.String()+": "+fmt.Sprintf("cluster CIDR %s: only one per family is used (%s)", p, b.clusterCIDR))
			continue
		}
		b.clusterCIDR = p.Masked()
	}
	b.nodeIP = firstOf(f, cfg.NodeIPs)
	if !b.nodeIP.IsValid() {
		b.nodeIP = firstOf(f, node.Addresses)
	}
	// An IPv4 address may come as IPv4-mapped IPv6 (16 bytes from
	// netlink); it is the same address, as the IPVS planner sees it.
	local := make([]netip.Addr, len(cfg.LocalAddresses))
	for i, a := range cfg.LocalAddresses {
		local[i] = a.Unmap()
		if f.Has(local[i]) {
			b.local[local[i]] = true
		}
	}
	for _, a := range cfg.NodePortIPs {
		if a = a.Unmap(); f.Has(a) {
			b.nodePortIPs = append(b.nodePortIPs, a)
		}
	}
	return b
}

// service computes the part of one Service.
func (b *familyBuilder) service(svc *servicecache.Service) *servicePart {
	part := &servicePart{}
	b.part = part
	for i := range svc.Ports {
		b.servicePort(svc, &svc.Ports[i])
	}
	b.part = nil
	return part
}

func firstOf(f Family, addrs []netip.Addr) netip.Addr {
	for _, a := range addrs {
		if f.Has(a) {
			return a
		}
	}
	return netip.Addr{}
}

func (b *familyBuilder) problemf(format string, args ...any) {
	b.part.problems = append(b.part.problems, b.f.String()+": "+fmt.Sprintf(format, args...))
}

// add records e in the family's variant of an upstream set.
func (b *familyBuilder) add(base string, e Entry) {
	b.part.entries = append(b.part.entries, setEntry{base, e})
}

func (b *familyBuilder) nonEmpty(base string) bool { return len(b.counts[base]) > 0 }

// servicePort records the entries of one service port, as upstream's
// syncProxyRules does for each svcPort of the family.
func (b *familyBuilder) servicePort(svc *servicecache.Service, sp *servicecache.ServicePort) {
	clusterIP := firstOf(b.f, svc.ClusterIPs)
	if !clusterIP.IsValid() {
		return // the service has no cluster IP of this family: not ours here
	}
	proto, ok := parseProto(string(sp.Protocol))
	if !ok {
		b.problemf("%s port %q: unsupported protocol %q", svc.Key, sp.Name, sp.Protocol)
		return
	}
	if sp.Port == 0 {
		b.problemf("%s port %q: port 0", svc.Key, sp.Name)
		return
	}
	b.loopback(sp, proto)
	b.clusterIP(clusterIP, sp, proto)
	b.externalIPs(svc, sp, proto)
	b.loadBalancerIPs(svc, sp, proto)
	b.nodePort(svc, sp, proto)
	if svc.HealthCheckNodePort != 0 {
		b.add(setHealthCheckNodePort, Entry{Port: svc.HealthCheckNodePort})
	}
}

// loopback: a local endpoint reaching its own service gets masqueraded so
// the reply comes back through IPVS (hairpin).
func (b *familyBuilder) loopback(sp *servicecache.ServicePort, proto Proto) {
	if b.nodeName == "" {
		return
	}
	for _, ep := range sp.Endpoints {
		if ep.NodeName != b.nodeName || !b.f.Has(ep.Addr) || ep.Port == 0 {
			continue
		}
		b.add(setLoopBack, Entry{IP: ep.Addr, Proto: proto, Port: ep.Port, IP2: ep.Addr})
	}
}

func (b *familyBuilder) clusterIP(ip netip.Addr, sp *servicecache.ServicePort, proto Proto) {
	b.add(setClusterIP, Entry{IP: ip, Proto: proto, Port: sp.Port})
	b.add(setIPVSIPs, Entry{IP: ip})
}

func (b *familyBuilder) externalIPs(svc *servicecache.Service, sp *servicecache.ServicePort, proto Proto) {
	for _, ip := range svc.ExternalIPs {
		if !b.f.Has(ip) {
			continue
		}
		e := Entry{IP: ip, Proto: proto, Port: sp.Port}
		if svc.ExternalPolicyLocal {
			b.add(setExternalIPLocal, e)
		} else {
			b.add(setExternalIP, e) // SNAT, since any endpoint may be used
		}
		b.bind(ip)
	}
}

// bind records an address IPVS will bind to kube-ipvs0: all but those
// already on another interface.
func (b *familyBuilder) bind(ip netip.Addr) {
	if !b.local[ip] {
		b.add(setIPVSIPs, Entry{IP: ip})
	}
}

func (b *familyBuilder) loadBalancerIPs(svc *servicecache.Service, sp *servicecache.ServicePort, proto Proto) {
	ranges, filter := b.sourceRanges(svc)
	for _, ip := range svc.LoadBalancerIPs {
		if !b.f.Has(ip) {
			continue
		}
		e := Entry{IP: ip, Proto: proto, Port: sp.Port}
		b.add(setLoadBalancer, e)
		if svc.ExternalPolicyLocal {
			b.add(setLoadBalancerLocal, e)
		}
		if filter {
			// With no range (none usable), the firewall drops all
			// outside traffic to the entry: fail closed.
			b.add(setLoadBalancerFW, e)
			allowFromNode := false
			for _, r := range ranges {
				b.add(setLoadBalancerSrcCIDR, Entry{IP: ip, Proto: proto, Port: sp.Port, Net: r})
				if b.nodeIP.IsValid() && r.Contains(b.nodeIP) {
					allowFromNode = true
				}
			}
			if allowFromNode {
				// IPVS traffic from the node carries the VIP as source.
				b.add(setLoadBalancerSourceIP, Entry{IP: ip, Proto: proto, Port: sp.Port, IP2: ip})
			} else {
				b.denyFromNode(e)
			}
			if len(ranges) == 0 {
				b.unusableRanges(svc)
			}
		}
		b.bind(ip)
	}
}

// sourceRanges returns the family's loadBalancerSourceRanges, and whether
// to filter at all. Like upstream, a zero-length prefix of the family
// means "allow all", i.e. no filtering. Unlike upstream, ranges asked for
// of which none is usable for the family (all of the other family, or
// none parsed) filter with no range allowed: the Service's owner wanted
// its load balancer closed to most of the world, and opening it to all of
// this family would be the opposite.
func (b *familyBuilder) sourceRanges(svc *servicecache.Service) (ranges []netip.Prefix, filter bool) {
	for _, r := range svc.LoadBalancerSourceRanges {
		if !b.f.HasPrefix(r) {
			continue
		}
		if r.Bits() == 0 {
			return nil, false
		}
		ranges = append(ranges, r.Masked())
	}
	return ranges, len(ranges) > 0 || svc.SourceRangesRequested || len(svc.LoadBalancerSourceRanges) > 0
}

// unusableRanges records, once per Service and family, that its load
// balancer IPs of the family are closed for want of a usable range.
func (b *familyBuilder) unusableRanges(svc *servicecache.Service) {
	if slices.ContainsFunc(b.part.svcProblems, func(p ServiceProblem) bool { return p.Reason == ReasonSourceRangesUnusable }) {
		return
	}
	given := "none could be parsed"
	if len(svc.LoadBalancerSourceRanges) > 0 {
		strs := make([]string, len(svc.LoadBalancerSourceRanges))
		for i, r := range svc.LoadBalancerSourceRanges {
			strs[i] = r.String()
		}
		given = "given " + strings.Join(strs, ", ")
	}
	b.part.svcProblems = append(b.part.svcProblems, ServiceProblem{
		Service: svc.Key,
		Reason:  ReasonSourceRangesUnusable,
		Message: fmt.Sprintf("loadBalancerSourceRanges has no %v range (%s): %v traffic to the load balancer IPs is dropped, also from this node", b.f, given, b.f),
	})
}

// denyFromNode drops node-originated traffic to a load balancer whose source
// ranges exclude the node (upstream issue 119656). With IPVS both the source
// and the virtual address are the VIP.
func (b *familyBuilder) denyFromNode(e Entry) {
	b.part.denied = append(b.part.denied, e)
}

// outFilterRule is the KUBE-IPVS-OUT-FILTER rule of a denied entry.
func outFilterRule(e Entry) Rule {
	// As iptables prints it, so that the applier finds the chain unchanged
	// on the next sync: "-s" with its host prefix, numeric protocol, and
	// --vaddr without one (libxt_ipvs prints the mask with
	// xtables_ipmask_to_numeric, which leaves out /32 and /128).
	host := netip.PrefixFrom(e.IP, e.IP.BitLen()).String()
	return Rule{"-s", host, "-m", "ipvs", "--vproto", fmt.Sprint(int(e.Proto)),
		"--vaddr", e.IP.String(), "--vport", fmt.Sprint(e.Port), "-j", "DROP"}
}

func (b *familyBuilder) nodePort(svc *servicecache.Service, sp *servicecache.ServicePort, proto Proto) {
	if sp.NodePort == 0 || len(b.nodePortIPs) == 0 {
		return // upstream skips NodePorts when no node address qualifies
	}
	var set, localSet string
	var entries []Entry
	switch proto {
	case ProtoTCP:
		set, localSet = setNodePortTCP, setNodePortLocalTCP
		entries = []Entry{{Port: sp.NodePort}}
	case ProtoUDP:
		set, localSet = setNodePortUDP, setNodePortLocalUDP
		entries = []Entry{{Port: sp.NodePort}}
	case ProtoSCTP:
		// bitmap:port cannot tell SCTP from TCP, hence hash:ip,port.
		set, localSet = setNodePortSCTP, setNodePortLocalSCTP
		for _, ip := range b.nodePortIPs {
			entries = append(entries, Entry{IP: ip, Proto: ProtoSCTP, Port: sp.NodePort})
		}
	}
	for _, e := range entries {
		b.add(set, e)
		if svc.ExternalPolicyLocal {
			b.add(localSet, e)
		}
	}
}
