package servicecache

import (
	"fmt"
	"net/netip"
	"strings"
)

// The node-address policy: which of the Node's addresses are its primary
// IPs and which serve NodePorts. It lives beside Node, whose address order
// it depends on; the planners receive its results.

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
// node's addresses.
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

// Resolve returns the addresses of nodeAddrs NodePorts are served on: all
// of them if cidrs is empty, else those inside one of cidrs.Prefixes, plus
// for "primary" the first address of each family.
//
// "primary" is kube-proxy's primary node IP per family, i.e. the first
// InternalIP of that family in the Node's status, so nodeAddrs must be in
// Node.Addresses order (InternalIPs first, status order). The result keeps
// nodeAddrs' order without duplicates; IPv4-mapped IPv6 addresses count as
// IPv4, zones are dropped, and invalid addresses are skipped.
func (cidrs NodePortAddresses) Resolve(nodeAddrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	primaryTaken := map[bool]bool{} // keyed by Is4
	for _, a := range nodeAddrs {
		if !a.IsValid() {
			continue
		}
		a = a.Unmap().WithZone("")
		isPrimary := !primaryTaken[a.Is4()]
		primaryTaken[a.Is4()] = true
		if seen[a] {
			continue
		}
		// Like kube-proxy, a loopback primary means "unknown": no address.
		if cidrs.IsZero() || (cidrs.Primary && isPrimary && !a.IsLoopback()) || containedIn(a, cidrs.Prefixes) {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
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
