package iptables

import "fmt"

// chains derives the content of every chain from which sets are non-empty,
// following upstream's writeIptablesRules rule by rule. Rules are written in
// the canonical form iptables-save prints (e.g. "-s" before "-m", MARK as
// --set-xmark), so that reading them back compares equal; the comments on
// each rule say what upstream writes when the two differ.
func (b *familyBuilder) chains() []Chain {
	rules := map[string][]Rule{} // by "table/chain"
	add := func(t Table, chain string, r Rule) {
		k := string(t) + "/" + chain
		rules[k] = append(rules[k], r)
	}
	name := func(base string) string { return setName(base, b.f) }
	comment := func(base string) []string {
		for _, s := range setSkeleton {
			if s.name == base {
				return []string{"-m", "comment", "--comment", s.comment}
			}
		}
		return nil
	}
	matchSet := func(base, match string) []string {
		return []string{"-m", "set", "--match-set", name(base), match}
	}
	mark := fmt.Sprintf("%#x", b.mark)
	markMask := mark + "/" + mark

	// Connections to localhost never go through IPVS.
	loopback := "127.0.0.0/8"
	if b.f == IPv6 {
		loopback = "::1/128"
	}
	add(TableNAT, chainServices, Rule{"-s", loopback, "-j", "RETURN"})

	for _, m := range setMatchRules {
		if !b.nonEmpty(m.set) {
			continue
		}
		var r Rule
		if m.proto != 0 {
			r = append(r, "-p", m.proto.String())
		}
		r = append(r, comment(m.set)...)
		r = append(r, matchSet(m.set, m.match)...)
		add(m.table, m.chain, append(r, "-j", m.target))
	}

	if b.nonEmpty(setClusterIP) {
		var r Rule
		switch {
		case b.cfg.MasqueradeAll:
			r = concat(comment(setClusterIP), matchSet(setClusterIP, "dst,dst"))
		case len(b.cfg.NotLocal[b.f]) > 0:
			// Same rule as below with another local-traffic detector;
			// iptables prints the -s/-i match first, as given.
			r = concat(b.cfg.NotLocal[b.f], comment(setClusterIP), matchSet(setClusterIP, "dst,dst"))
		case b.clusterCIDR.IsValid():
			// Masquerade off-cluster traffic to a service VIP: it may be
			// bounced to another node. iptables prints "! -s" first.
			r = concat([]string{"!", "-s", b.clusterCIDR.String()}, comment(setClusterIP), matchSet(setClusterIP, "dst,dst"))
		default:
			// No pod CIDR known: masquerade node-originated traffic whose
			// source is a VIP (kube-ipvs0 makes the kernel pick one).
			r = concat(comment(setClusterIP), matchSet(setClusterIP, "src,dst"))
		}
		add(TableNAT, chainServices, append(r, "-j", chainMarkMasq))
	}

	// External IPs: accept traffic from off the machine and traffic to IPs
	// that happen to be local; the non-Local set is also masqueraded.
	externalIP := func(base string, masquerade bool) {
		if !b.nonEmpty(base) {
			return
		}
		match := concat(comment(base), matchSet(base, "dst,dst"))
		if masquerade {
			add(TableNAT, chainServices, concat(match, []string{"-j", chainMarkMasq}))
		}
		add(TableNAT, chainServices, concat(match, []string{"-m", "physdev", "!", "--physdev-is-in",
			"-m", "addrtype", "!", "--src-type", "LOCAL", "-j", "ACCEPT"}))
		add(TableNAT, chainServices, concat(match, []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", "ACCEPT"}))
	}
	externalIP(setExternalIP, true)
	externalIP(setExternalIPLocal, false)

	add(TableNAT, chainServices, Rule{"-m", "addrtype", "--dst-type", "LOCAL", "-j", chainNodePort})
	add(TableNAT, chainLoadBalancer, Rule{"-j", chainMarkMasq})
	add(TableFilter, chainSourceRangesFW, Rule{"-j", "DROP"})
	for _, r := range b.outFilter {
		add(TableFilter, chainIPVSOutFilter, r)
	}

	// Accept IPVS traffic before other rules can drop it; must come last in
	// KUBE-SERVICES.
	for _, base := range []string{setClusterIP, setLoadBalancer} {
		if b.nonEmpty(base) {
			add(TableNAT, chainServices, concat(matchSet(base, "dst,dst"), []string{"-j", "ACCEPT"}))
		}
	}

	// Forward what we marked (NodePort traffic even under a DROP policy),
	// and the rest of those connections.
	add(TableFilter, chainForward, Rule{"-m", "comment", "--comment", "kubernetes forwarding rules",
		"-m", "mark", "--mark", markMask, "-j", "ACCEPT"})
	add(TableFilter, chainForward, Rule{"-m", "comment", "--comment", "kubernetes forwarding conntrack rule",
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"})

	add(TableFilter, chainNodePort, concat(comment(setHealthCheckNodePort),
		matchSet(setHealthCheckNodePort, "dst"), []string{"-j", "ACCEPT"}))

	// Keep VIPs from exposing the host's own ports (upstream issue 72236):
	// new connections to a kube-ipvs0 address are rejected unless they are
	// for a service port. iptables prints REJECT's default --reject-with.
	for _, base := range []string{setLoadBalancer, setClusterIP, setExternalIP, setExternalIPLocal} {
		add(TableFilter, chainIPVSFilter, concat(matchSet(base, "dst,dst"), []string{"-j", "RETURN"}))
	}
	add(TableFilter, chainIPVSFilter, concat(matchSet(setHealthCheckNodePort, "dst"), []string{"-j", "RETURN"}))
	reject := "icmp-port-unreachable"
	if b.f == IPv6 {
		reject = "icmp6-port-unreachable"
	}
	add(TableFilter, chainIPVSFilter, concat([]string{"-m", "conntrack", "--ctstate", "NEW"},
		matchSet(setIPVSIPs, "dst"), []string{"-j", "REJECT", "--reject-with", reject}))

	// SNAT what was marked, clearing the mark so a packet that traverses the
	// stack again is not masqueraded twice. Upstream writes
	// "-j MARK --xor-mark"; iptables prints it as --set-xmark M/0x0.
	add(TableNAT, chainPostrouting, Rule{"-m", "mark", "!", "--mark", markMask, "-j", "RETURN"})
	add(TableNAT, chainPostrouting, Rule{"-j", "MARK", "--set-xmark", mark + "/0x0"})
	add(TableNAT, chainPostrouting, Rule{"-m", "comment", "--comment", "kubernetes service traffic requiring SNAT",
		"-j", "MASQUERADE", "--random-fully"})

	// Upstream writes "-j MARK --or-mark M", printed as --set-xmark M/M.
	add(TableNAT, chainMarkMasq, Rule{"-j", "MARK", "--set-xmark", markMask})

	for _, r := range b.externalLocalMarkRules(markMask) {
		add(TableMangle, chainExternalLocalMark, r)
	}

	out := make([]Chain, 0, len(chainSkeleton))
	for _, c := range chainSkeleton {
		out = append(out, Chain{Table: c.table, Name: c.name, Rules: rules[string(c.table)+"/"+c.name]})
	}
	return out
}

func concat(parts ...[]string) Rule {
	var r Rule
	for _, p := range parts {
		r = append(r, p...)
	}
	return r
}

// externalLocalMarkRules send traffic from inside the cluster to the
// external addresses of externalTrafficPolicy: Local Services to every
// endpoint, as upstream's iptables proxier does ("masquerade LOCAL
// traffic", "route LOCAL traffic", "pod traffic for ... external
// destinations"): the SET target copies the address's mark from
// KUBE-EXTERNAL-LOCAL-MARK into the packet, and IPVS then picks that
// mark's virtual server over the address's. The node's own connections
// are also marked for masquerade, as upstream does: their source would
// otherwise be the external address itself when it is bound on kube-ipvs0
// (IPVS compares the whole mark, so these have firewall-mark virtual
// servers of their own, on mark|masquerade mark). Traffic from outside
// keeps the Local policy and its source address.
func (b *familyBuilder) externalLocalMarkRules(masqMark string) []Rule {
	if b.markEntries == 0 {
		return nil
	}
	set := setName(setExternalLocalMark, b.f)
	match := []string{"-m", "set", "--match-set", set, "dst,dst"}
	mapMark := []string{"-j", "SET", "--map-set", set, "dst,dst", "--map-mark"}
	fromNode := []string{"-m", "addrtype", "--src-type", "LOCAL"}
	rules := []Rule{
		concat(fromNode, match, []string{"-j", "MARK", "--set-xmark", masqMark}),
		concat(fromNode, match, mapMark),
	}
	if local := b.localMatch(); local != nil {
		rules = append(rules, concat(local, match, mapMark))
	}
	return rules
}

// localMatch is the match for traffic from this cluster's pods (upstream's
// local-traffic detector): Config.NotLocal without its negation, or the
// family's cluster CIDR; nil when there is none (then only the node's own
// traffic is sent to every endpoint, as upstream without a detector).
func (b *familyBuilder) localMatch() []string {
	if notLocal := b.cfg.NotLocal[b.f]; len(notLocal) > 0 {
		out := make([]string, 0, len(notLocal))
		for _, a := range notLocal {
			if a != "!" {
				out = append(out, a)
			}
		}
		return out
	}
	if b.clusterCIDR.IsValid() {
		return []string{"-s", b.clusterCIDR.String()}
	}
	return nil
}
