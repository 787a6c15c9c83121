package diff

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Annotator tags a virtual server with the Service port it stands for and
// the facts an allowlist entry may need to match on (traffic policies, the
// number of usable endpoints on this node): the same tag on both sides,
// since both proxies saw the same objects.
type Annotator struct {
	exact    map[string]string // "-t 10.96.0.1:443"
	nodePort map[string]string // "-t v4 30080": on any node address
}

// ipvsadm's protocol flag per Service protocol.
var protoFlag = map[v1.Protocol]string{v1.ProtocolTCP: "-t", v1.ProtocolUDP: "-u", v1.ProtocolSCTP: "--sctp-service"}

// NewAnnotator indexes the Services (as read back from the API server, with
// their cluster IPs, node ports and status) for node.
func NewAnnotator(node string, svcs []*v1.Service, eps []*discoveryv1.EndpointSlice) *Annotator {
	a := &Annotator{exact: map[string]string{}, nodePort: map[string]string{}}
	for _, svc := range svcs {
		sp := svc.Spec
		if sp.Type == v1.ServiceTypeExternalName {
			continue
		}
		local := map[bool]int{false: localUsable(node, svc, eps, discoveryv1.AddressTypeIPv4),
			true: localUsable(node, svc, eps, discoveryv1.AddressTypeIPv6)}
		itp := "Cluster"
		if sp.InternalTrafficPolicy != nil {
			itp = string(*sp.InternalTrafficPolicy)
		}
		etp := string(sp.ExternalTrafficPolicy)
		if etp == "" {
			etp = "Cluster"
		}
		for _, p := range sp.Ports {
			flag := protoFlag[p.Protocol]
			tag := func(kind string, v6 bool) string {
				t := fmt.Sprintf("svc=%s/%s kind=%s etp=%s itp=%s local=%d", svc.Name, p.Name, kind, etp, itp, local[v6])
				if kind == "lb" {
					t += " src=" + sourceRanges(sp.LoadBalancerSourceRanges, v6)
				}
				return t
			}
			for _, ip := range sp.ClusterIPs {
				a.addExact(flag, ip, p.Port, tag("cluster", isV6(ip)))
			}
			for _, ip := range sp.ExternalIPs {
				a.addExact(flag, ip, p.Port, tag("external", isV6(ip)))
			}
			for _, ing := range svc.Status.LoadBalancer.Ingress {
				a.addExact(flag, ing.IP, p.Port, tag("lb", isV6(ing.IP)))
			}
			if p.NodePort != 0 {
				a.nodePort[fmt.Sprintf("%s v4 %d", flag, p.NodePort)] = tag("nodeport", false)
				a.nodePort[fmt.Sprintf("%s v6 %d", flag, p.NodePort)] = tag("nodeport", true)
			}
		}
	}
	return a
}

func isV6(ip string) bool {
	a, err := netip.ParseAddr(ip)
	return err == nil && a.Is6()
}

// addExact keeps the first Service to claim an address and port.
func (a *Annotator) addExact(flag, ip string, port int32, tag string) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return
	}
	key := flag + " " + netip.AddrPortFrom(addr, uint16(port)).String()
	if _, dup := a.exact[key]; !dup {
		a.exact[key] = tag
	}
}

// Tag returns the tag of the virtual server that ipvsadm prints as flag
// (-t, -u, --sctp-service) and addrPort, or "" when no Service explains it.
func (a *Annotator) Tag(flag, addrPort string) string {
	if a == nil {
		return ""
	}
	if t, ok := a.exact[flag+" "+addrPort]; ok {
		return t
	}
	ap, err := netip.ParseAddrPort(addrPort)
	if err != nil {
		return ""
	}
	fam := "v4"
	if ap.Addr().Is6() {
		fam = "v6"
	}
	return a.nodePort[fmt.Sprintf("%s %s %d", flag, fam, ap.Port())]
}

// localUsable counts the distinct addresses of the Service's endpoints of
// one family on node that are ready, or serving and terminating (unset
// conditions read as the API documents: ready and serving unless false).
func localUsable(node string, svc *v1.Service, eps []*discoveryv1.EndpointSlice, at discoveryv1.AddressType) int {
	seen := map[string]bool{}
	for _, es := range eps {
		if es.Namespace != svc.Namespace || es.Labels[discoveryv1.LabelServiceName] != svc.Name || es.AddressType != at {
			continue
		}
		for _, e := range es.Endpoints {
			if e.NodeName == nil || *e.NodeName != node || len(e.Addresses) == 0 {
				continue
			}
			c := e.Conditions
			ready := c.Ready == nil || *c.Ready
			serving := ready
			if c.Serving != nil {
				serving = *c.Serving
			}
			terminating := c.Terminating != nil && *c.Terminating
			if ready || (serving && terminating) {
				seen[e.Addresses[0]] = true
			}
		}
	}
	return len(seen)
}

// sourceRanges says what loadBalancerSourceRanges hold for a family:
// "unset" (no ranges at all), "open" (a /0 of the family: no filter),
// "some" (ranges of the family) or "none" (ranges, none of this family).
func sourceRanges(ranges []string, v6 bool) string {
	if len(ranges) == 0 {
		return "unset"
	}
	some := false
	for _, r := range ranges {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil || p.Addr().Is6() != v6 {
			continue
		}
		if p.Bits() == 0 {
			return "open"
		}
		some = true
	}
	if some {
		return "some"
	}
	return "none"
}

// ipsetMemberRe is the "IP,proto:port" head of an ipset member.
var ipsetMemberRe = regexp.MustCompile(`^\[?([0-9a-fA-F.:]+)\]?,(tcp|udp|sctp):(\d+)`)

// IPSetTag returns the tag of an ipset member that starts with a Service's
// address, protocol and port, or "".
func (a *Annotator) IPSetTag(member string) string {
	m := ipsetMemberRe.FindStringSubmatch(member)
	if a == nil || m == nil {
		return ""
	}
	addr, err := netip.ParseAddr(m[1])
	if err != nil {
		return ""
	}
	flag := map[string]string{"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}[m[2]]
	return a.Tag(flag, netip.AddrPortFrom(addr, parsePort(m[3])).String())
}

func parsePort(s string) uint16 {
	var p uint16
	fmt.Sscan(s, &p)
	return p
}
