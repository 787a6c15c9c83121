package iptables

import "strings"

// This file declares, as data, every ipset and chain we own and how they are
// linked, copied from upstream kube-proxy's IPVS proxier (v1.37,
// pkg/proxy/ipvs/proxier.go and ipset.go) so that `ipset list` and
// `iptables-save` look the same as under upstream.

// Upstream's ipset names (IPv4; see setName for IPv6).
const (
	setLoopBack             = "KUBE-LOOP-BACK"
	setClusterIP            = "KUBE-CLUSTER-IP"
	setExternalIP           = "KUBE-EXTERNAL-IP"
	setExternalIPLocal      = "KUBE-EXTERNAL-IP-LOCAL"
	setLoadBalancer         = "KUBE-LOAD-BALANCER"
	setLoadBalancerFW       = "KUBE-LOAD-BALANCER-FW"
	setLoadBalancerLocal    = "KUBE-LOAD-BALANCER-LOCAL"
	setLoadBalancerSourceIP = "KUBE-LOAD-BALANCER-SOURCE-IP"
	setLoadBalancerSrcCIDR  = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
	setNodePortTCP          = "KUBE-NODE-PORT-TCP"
	setNodePortLocalTCP     = "KUBE-NODE-PORT-LOCAL-TCP"
	setNodePortUDP          = "KUBE-NODE-PORT-UDP"
	setNodePortLocalUDP     = "KUBE-NODE-PORT-LOCAL-UDP"
	setNodePortSCTP         = "KUBE-NODE-PORT-SCTP-HASH"
	setNodePortLocalSCTP    = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
	setHealthCheckNodePort  = "KUBE-HEALTH-CHECK-NODE-PORT"
	setIPVSIPs              = "KUBE-IPVS-IPS"
	// Ours, not upstream's: the external addresses of
	// externalTrafficPolicy: Local Services, each with the firewall mark of
	// the virtual server that takes their traffic from inside the cluster
	// (pkg/ipvs/fwmark.go).
	setExternalLocalMark = "KUBE-EXTERNAL-LOCAL-MARK"
)

// setSkeleton is upstream's ipsetInfo, in its order (which is also the order
// we create sets in, hence the order `ipset list` shows).
var setSkeleton = []struct {
	name    string
	typ     SetType
	comment string
}{
	{setLoopBack, HashIPPortIP, "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"},
	{setClusterIP, HashIPPort, "Kubernetes service cluster ip + port for masquerade purpose"},
	{setExternalIP, HashIPPort, "Kubernetes service external ip + port for masquerade and filter purpose"},
	{setExternalIPLocal, HashIPPort, "Kubernetes service external ip + port with externalTrafficPolicy=local"},
	{setLoadBalancer, HashIPPort, "Kubernetes service lb portal"},
	{setLoadBalancerFW, HashIPPort, "Kubernetes service load balancer ip + port for load balancer with sourceRange"},
	{setLoadBalancerLocal, HashIPPort, "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"},
	{setLoadBalancerSourceIP, HashIPPortIP, "Kubernetes service load balancer ip + port + source IP for packet filter purpose"},
	{setLoadBalancerSrcCIDR, HashIPPortNet, "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"},
	{setNodePortTCP, BitmapPort, "Kubernetes nodeport TCP port for masquerade purpose"},
	{setNodePortLocalTCP, BitmapPort, "Kubernetes nodeport TCP port with externalTrafficPolicy=local"},
	{setNodePortUDP, BitmapPort, "Kubernetes nodeport UDP port for masquerade purpose"},
	{setNodePortLocalUDP, BitmapPort, "Kubernetes nodeport UDP port with externalTrafficPolicy=local"},
	{setNodePortSCTP, HashIPPort, "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"},
	{setNodePortLocalSCTP, HashIPPort, "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"},
	{setHealthCheckNodePort, BitmapPort, "Kubernetes health check node port"},
	{setIPVSIPs, HashIP, "Addresses on the ipvs interface"},
	{setExternalLocalMark, HashIPPort, "externalTrafficPolicy=local service external ip + port, with the mark of the virtual server for traffic from inside the cluster"},
}

// maxSetNameLen is the kernel's limit (IPSET_MAXNAMELEN minus the NUL).
const maxSetNameLen = 31

// setName is the family's name for one of upstream's sets. IPv6 sets get
// the "KUBE-6-" prefix and, like upstream, are cut to 31 characters
// (KUBE-6-LOAD-BALANCER-SOURCE-CID, KUBE-6-NODE-PORT-LOCAL-SCTP-HAS).
func setName(base string, f Family) string {
	if f != IPv6 {
		return base
	}
	name := strings.Replace(base, "KUBE-", "KUBE-6-", 1)
	if len(name) > maxSetNameLen {
		name = name[:maxSetNameLen]
	}
	return name
}

// SetSpecs returns every set of the family, in creation order.
func SetSpecs(f Family) []SetSpec {
	specs := make([]SetSpec, 0, len(setSkeleton))
	for _, s := range setSkeleton {
		spec := SetSpec{Name: setName(s.name, f), Type: s.typ, Family: f, Comment: s.comment, SkbInfo: s.name == setExternalLocalMark}
		if s.typ == BitmapPort {
			spec.PortFrom, spec.PortTo = 0, 65535
		} else {
			spec.MaxElem = 65536
		}
		specs = append(specs, spec)
	}
	return specs
}

// ownedSets holds the names of every set of both families: the only sets
// the implementations agree to destroy.
var ownedSets = func() map[string]bool {
	m := map[string]bool{}
	for _, f := range []Family{IPv4, IPv6} {
		for _, s := range SetSpecs(f) {
			m[s.Name] = true
		}
	}
	return m
}()

// OwnsSet reports whether name is one of our ipsets.
func OwnsSet(name string) bool { return ownedSets[name] }

// Our chains.
const (
	chainServices       = "KUBE-SERVICES"
	chainPostrouting    = "KUBE-POSTROUTING"
	chainNodePort       = "KUBE-NODE-PORT"
	chainLoadBalancer   = "KUBE-LOAD-BALANCER"
	chainMarkMasq       = "KUBE-MARK-MASQ"
	chainForward        = "KUBE-FORWARD"
	chainProxyFirewall  = "KUBE-PROXY-FIREWALL"
	chainSourceRangesFW = "KUBE-SOURCE-RANGES-FIREWALL"
	chainIPVSFilter     = "KUBE-IPVS-FILTER"
	chainIPVSOutFilter  = "KUBE-IPVS-OUT-FILTER"
	// chainExternalLocalMark (mangle) marks traffic from this cluster's
	// pods and from the node to externalTrafficPolicy: Local external
	// addresses with the firewall mark of their Service port.
	chainExternalLocalMark = "KUBE-EXTERNAL-LOCAL-MARK"
)

// chainSkeleton is upstream's iptablesChains: every chain we own, per
// table. Names are exact: kubelet and the iptables proxier also use KUBE-*
// chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-SVC-...), which are not
// ours to touch.
var chainSkeleton = []struct {
	table Table
	name  string
}{
	{TableNAT, chainServices},
	{TableNAT, chainPostrouting},
	{TableNAT, chainNodePort},
	{TableNAT, chainLoadBalancer},
	{TableNAT, chainMarkMasq},
	{TableFilter, chainForward},
	{TableFilter, chainNodePort},
	{TableFilter, chainProxyFirewall},
	{TableFilter, chainSourceRangesFW},
	{TableFilter, chainIPVSFilter},
	{TableFilter, chainIPVSOutFilter},
	{TableMangle, chainExternalLocalMark},
}

// OwnsChain reports whether chain in table is one of ours.
func OwnsChain(table Table, chain string) bool {
	for _, c := range chainSkeleton {
		if c.table == table && c.name == chain {
			return true
		}
	}
	return false
}

// Jumps is upstream's iptablesJumpChain. Each is inserted at the top of its
// built-in chain when missing (upstream: EnsureRule(Prepend)), so on a fresh
// host INPUT ends up as KUBE-IPVS-FILTER, KUBE-PROXY-FIREWALL,
// KUBE-NODE-PORT.
var Jumps = []Jump{
	{TableNAT, "OUTPUT", chainServices, "kubernetes service portals"},
	{TableNAT, "PREROUTING", chainServices, "kubernetes service portals"},
	{TableNAT, "POSTROUTING", chainPostrouting, "kubernetes postrouting rules"},
	{TableFilter, "FORWARD", chainForward, "kubernetes forwarding rules"},
	{TableFilter, "INPUT", chainNodePort, "kubernetes health check rules"},
	{TableFilter, "INPUT", chainProxyFirewall, "kube-proxy firewall rules"},
	{TableFilter, "FORWARD", chainProxyFirewall, "kube-proxy firewall rules"},
	{TableFilter, "INPUT", chainIPVSFilter, "kubernetes ipvs access filter"},
	{TableFilter, "OUTPUT", chainIPVSOutFilter, "kubernetes ipvs access filter"},
	// Before IPVS sees the packet: it looks the mark up at INPUT (pods)
	// and OUTPUT (the node).
	{TableMangle, "PREROUTING", chainExternalLocalMark, "kubernetes externalTrafficPolicy=local in-cluster marks"},
	{TableMangle, "OUTPUT", chainExternalLocalMark, "kubernetes externalTrafficPolicy=local in-cluster marks"},
}

// builtinChains are the chains jumps may be inserted into.
var builtinChains = map[Table]map[string]bool{
	TableNAT:    {"PREROUTING": true, "INPUT": true, "OUTPUT": true, "POSTROUTING": true},
	TableFilter: {"INPUT": true, "FORWARD": true, "OUTPUT": true},
	TableMangle: {"PREROUTING": true, "OUTPUT": true},
}

// setMatchRules is upstream's ipsetWithIptablesChain: a rule per non-empty
// set, `-A <chain> [-p proto] -m comment --comment <set comment> -m set
// --match-set <set> <match> -j <target>`, in this order. Local sets come
// before their non-local ones so that Local traffic RETURNs before being
// marked for masquerade.
var setMatchRules = []struct {
	set    string
	table  Table
	chain  string
	target string
	match  string
	proto  Proto
}{
	{setLoopBack, TableNAT, chainPostrouting, "MASQUERADE", "dst,dst,src", 0},
	{setLoadBalancer, TableNAT, chainServices, chainLoadBalancer, "dst,dst", 0},
	{setLoadBalancerLocal, TableNAT, chainLoadBalancer, "RETURN", "dst,dst", 0},
	{setNodePortLocalTCP, TableNAT, chainNodePort, "RETURN", "dst", ProtoTCP},
	{setNodePortTCP, TableNAT, chainNodePort, chainMarkMasq, "dst", ProtoTCP},
	{setNodePortLocalUDP, TableNAT, chainNodePort, "RETURN", "dst", ProtoUDP},
	{setNodePortUDP, TableNAT, chainNodePort, chainMarkMasq, "dst", ProtoUDP},
	{setNodePortLocalSCTP, TableNAT, chainNodePort, "RETURN", "dst,dst", ProtoSCTP},
	{setNodePortSCTP, TableNAT, chainNodePort, chainMarkMasq, "dst,dst", ProtoSCTP},
	{setLoadBalancerFW, TableFilter, chainProxyFirewall, chainSourceRangesFW, "dst,dst", 0},
	{setLoadBalancerSrcCIDR, TableFilter, chainSourceRangesFW, "RETURN", "dst,dst,src", 0},
	{setLoadBalancerSourceIP, TableFilter, chainSourceRangesFW, "RETURN", "dst,dst,src", 0},
}

// DefaultMasqueradeMark is upstream's default (--iptables-masquerade-bit=14).
const DefaultMasqueradeMark uint32 = 1 << 14
