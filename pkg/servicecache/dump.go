package servicecache

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// String prints the snapshot in a canonical, line-oriented form (node,
// then services with their ports and endpoints, then the changed keys),
// suited to golden-text comparisons and debug logs.
func (s *Snapshot) String() string {
	if s == nil {
		return "<nil snapshot>\n"
	}
	var b strings.Builder
	b.WriteString(s.Node.String())
	b.WriteByte('\n')
	for _, svc := range s.Services {
		b.WriteString(svc.Dump())
	}
	if len(s.Changed) > 0 {
		keys := make([]string, len(s.Changed))
		for i, k := range s.Changed {
			keys[i] = k.String()
		}
		fmt.Fprintf(&b, "changed %s\n", strings.Join(keys, " "))
	}
	return b.String()
}

// String prints the node on one line.
func (n Node) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "node %s", n.Name)
	opt(&b, "zone", n.Zone)
	opt(&b, "addrs", joinAddrs(n.Addresses))
	opt(&b, "podCIDRs", joinPrefixes(n.PodCIDRs))
	return b.String()
}

// Dump prints the service on one line, then one line per port and one per
// endpoint, indented. Fields at their zero value are omitted.
func (s *Service) Dump() string {
	if s == nil {
		return "<nil service>\n"
	}
	var b strings.Builder
	typ := string(s.Type)
	if typ == "" {
		typ = "-"
	}
	fmt.Fprintf(&b, "service %s %s ips=%s", s.Key, typ, joinAddrs(s.ClusterIPs))
	opt(&b, "externalIPs", joinAddrs(s.ExternalIPs))
	opt(&b, "lbIPs", joinAddrs(s.LoadBalancerIPs))
	opt(&b, "sourceRanges", joinPrefixes(s.LoadBalancerSourceRanges))
	if s.AffinityTimeoutSeconds > 0 {
		fmt.Fprintf(&b, " affinity=%d", s.AffinityTimeoutSeconds)
	}
	if s.ExternalPolicyLocal {
		b.WriteString(" etp=Local")
	}
	if s.InternalPolicyLocal {
		b.WriteString(" itp=Local")
	}
	if s.HealthCheckNodePort > 0 {
		fmt.Fprintf(&b, " hcNodePort=%d", s.HealthCheckNodePort)
	}
	opt(&b, "trafficDistribution", s.TrafficDistribution)
	if len(s.Annotations) > 0 {
		for _, k := range slices.Sorted(maps.Keys(s.Annotations)) {
			fmt.Fprintf(&b, " %s=%q", k, s.Annotations[k])
		}
	}
	b.WriteByte('\n')
	for _, p := range s.Ports {
		fmt.Fprintf(&b, "  port %q/%s %d", p.Name, p.Protocol, p.Port)
		if p.NodePort > 0 {
			fmt.Fprintf(&b, " nodePort=%d", p.NodePort)
		}
		b.WriteByte('\n')
		for _, e := range p.Endpoints {
			b.WriteString("    ")
			b.WriteString(e.String())
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// String prints the endpoint on one line: address:port, the true
// conditions (or "not-serving" when none), then topology.
func (e Endpoint) String() string {
	var b strings.Builder
	b.WriteString(netip.AddrPortFrom(e.Addr, e.Port).String())
	var conds []string
	if e.Ready {
		conds = append(conds, "ready")
	}
	if e.Serving {
		conds = append(conds, "serving")
	}
	if e.Terminating {
		conds = append(conds, "terminating")
	}
	if len(conds) == 0 {
		conds = append(conds, "not-serving")
	}
	b.WriteByte(' ')
	b.WriteString(strings.Join(conds, ","))
	opt(&b, "node", e.NodeName)
	opt(&b, "zone", e.Zone)
	opt(&b, "zoneHints", strings.Join(e.ZoneHints, ","))
	opt(&b, "nodeHints", strings.Join(e.NodeHints, ","))
	return b.String()
}

func opt(b *strings.Builder, name, val string) {
	if val != "" {
		fmt.Fprintf(b, " %s=%s", name, val)
	}
}

func joinAddrs(a []netip.Addr) string {
	s := make([]string, len(a))
	for i, x := range a {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func joinPrefixes(p []netip.Prefix) string {
	s := make([]string, len(p))
	for i, x := range p {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}
