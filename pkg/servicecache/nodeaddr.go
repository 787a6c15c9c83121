package servicecache

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// The node-address policy: which of the Node's addresses are its primary
// IPs, and which of the host's addresses serve NodePorts and health check
// node ports. It lives beside Node, whose address order "primary" depends
// on; the host's addresses come in as data, and the planners receive its
// results.

// Keywords of --nodeport-addresses, as kube-proxy's.
const (
	NodePortAddressesPrimary   = "primary"
	NodePortAddressesAll       = "all"
	NodePortAddressesLocalhost = "localhost"
)

// NodePortAddresses is a parsed --nodeport-addresses.
type NodePortAddresses struct {
	// Prefixes are the CIDRs given, with "all" and "localhost" expanded.
	Prefixes []netip.Prefix
	// Primary is set by the "primary" keyword.
	Primary bool
}

// IsZero reports an empty --nodeport-addresses, which means all of the
// host's addresses.
func (n NodePortAddresses) IsZero() bool { return len(n.Prefixes) == 0 && !n.Primary }

// ParseNodePortAddresses parses --nodeport-addresses values: CIDRs and the
// keywords "primary", "all" and "localhost", each keyword at most once, as
// kube-proxy validates them. Blank entries are ignored.
func ParseNodePortAddresses(vals []string) (NodePortAddresses, error) {
	var out NodePortAddresses
	seen := map[string]bool{}
	for _, raw := range vals {
		s := strings.TrimSpace(raw)
		switch s {
		case "":
			continue
		case NodePortAddressesPrimary, NodePortAddressesAll, NodePortAddressesLocalhost:
			if seen[s] {
				return NodePortAddresses{}, fmt.Errorf("keyword %q given twice", s)
			}
			seen[s] = true
		}
		switch s {
		case NodePortAddressesPrimary:
			out.Primary = true
		case NodePortAddressesAll:
			out.Prefixes = append(out.Prefixes, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
		case NodePortAddressesLocalhost:
			// IPVS cannot serve NodePorts on loopback; accepted so
			// kube-proxy configurations still parse.
			out.Prefixes = append(out.Prefixes, netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))
		default:
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return NodePortAddresses{}, fmt.Errorf("%q must be a valid CIDR or one of the keywords 'primary', 'localhost', 'all'", s)
			}
			out.Prefixes = append(out.Prefixes, p.Masked())
		}
	}
	return out, nil
}

// Expand returns the prefixes NodePorts are matched against, as
// kube-proxy expands --nodeport-addresses: "primary" becomes the node's
// primary IP of each family as a /32 or /128, a loopback primary (kube-proxy's
// "unknown") none. primary is Node.PrimaryIPs.
func (n NodePortAddresses) Expand(primary []netip.Addr) []netip.Prefix {
	out := slices.Clone(n.Prefixes)
	if n.Primary {
		for _, a := range primary {
			if a = a.Unmap().WithZone(""); a.IsValid() && !a.IsLoopback() {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	return out
}

// NodePortIPs returns the addresses NodePort virtual servers (and the SCTP
// node-port set entries, and the conntrack cleanup) use, as upstream IPVS
// mode picks them from the host's addresses: local are the addresses of
// the host's interfaces except kube-ipvs0 (Service addresses are never
// NodePort addresses), primary the node's primary IPs (Node.PrimaryIPs).
//
// Per family, as kube-proxy's NodePortAddresses: with no prefix of that
// family after Expand, or a zero-length one, every local address of the
// family but loopback and IPv6 link-local; otherwise the local addresses
// inside one of its prefixes but loopback (IPVS cannot serve NodePorts on
// loopback). The result is sorted without duplicates; IPv4-mapped IPv6
// addresses count as IPv4, zones are dropped, invalid addresses skipped.
func (n NodePortAddresses) NodePortIPs(primary, local []netip.Addr) []netip.Addr {
	prefixes := n.Expand(primary)
	var out []netip.Addr
	for _, is4 := range []bool{true, false} {
		fam, matchAll := familyPrefixes(prefixes, is4)
		for _, a := range local {
			a = a.Unmap().WithZone("")
			if !a.IsValid() || a.Is4() != is4 || a.IsLoopback() {
				continue
			}
			if matchAll {
				if a.Is6() && a.IsLinkLocalUnicast() {
					continue
				}
			} else if !containedIn(a, fam) {
				continue
			}
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// HealthCheckAddrs returns where health check node ports listen, as
// upstream's service health server: a family whose prefixes match all of
// its addresses (see NodePortIPs) listens on its unspecified address
// (0.0.0.0 or ::), any other on its NodePortIPs, none if it has none. all
// is set when both families match all: one listener for both then.
func (n NodePortAddresses) HealthCheckAddrs(primary, local []netip.Addr) (addrs []netip.Addr, all bool) {
	prefixes := n.Expand(primary)
	_, all4 := familyPrefixes(prefixes, true)
	_, all6 := familyPrefixes(prefixes, false)
	if all4 && all6 {
		return nil, true
	}
	if all4 {
		addrs = append(addrs, netip.IPv4Unspecified())
	}
	if all6 {
		addrs = append(addrs, netip.IPv6Unspecified())
	}
	for _, a := range n.NodePortIPs(primary, local) {
		if (a.Is4() && !all4) || (a.Is6() && !all6) {
			addrs = append(addrs, a)
		}
	}
	return addrs, false
}

// familyPrefixes returns the prefixes of one family, and whether they
// match all of its addresses: none given, or a zero-length one (kube-proxy
// adds 0.0.0.0/0 or ::/0 to a family with no CIDR).
func familyPrefixes(prefixes []netip.Prefix, is4 bool) (fam []netip.Prefix, matchAll bool) {
	for _, p := range prefixes {
		if p.Addr().Unmap().Is4() != is4 {
			continue
		}
		if p.Bits() == 0 {
			return nil, true
		}
		fam = append(fam, p)
	}
	return fam, len(fam) == 0
}

func containedIn(a netip.Addr, prefixes []netip.Prefix) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// PrimaryIPs returns the node's primary IP of each family: the first
// InternalIP of that family, else its first ExternalIP (upstream's
// GetNodeHostIPs). The first family listed is the Node's own first.
func (n Node) PrimaryIPs() []netip.Addr {
	var out []netip.Addr
	var v4, v6 bool
	for _, a := range n.Addresses {
		switch {
		case a.Is4() && !v4:
			out, v4 = append(out, a), true
		case a.Is6() && !v6:
			out, v6 = append(out, a), true
		}
	}
	return out
}
