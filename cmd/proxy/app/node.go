package app

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// NodeNameEnv is the environment variable consulted for the node name when
// --hostname-override is unset; DaemonSets set it from spec.nodeName.
const NodeNameEnv = "NODE_NAME"

// NodeName returns the name of this node's Node object: --hostname-override,
// else $NODE_NAME, else the hostname; lowercased, as Node names are.
func (o *Options) NodeName() (string, error) {
	return nodeName(o.HostnameOverride, os.Getenv(NodeNameEnv), os.Hostname)
}

func nodeName(override, env string, hostname func() (string, error)) (string, error) {
	if override != "" {
		name := strings.TrimSpace(override)
		if name == "" {
			return "", errors.New("--hostname-override: must not be blank")
		}
		return strings.ToLower(name), nil
	}
	if name := strings.TrimSpace(env); name != "" {
		return strings.ToLower(name), nil
	}
	h, err := hostname()
	if err != nil {
		return "", fmt.Errorf("node name: no --hostname-override or $%s, and the hostname is unavailable: %w", NodeNameEnv, err)
	}
	name := strings.TrimSpace(h)
	if name == "" {
		return "", fmt.Errorf("node name: no --hostname-override or $%s, and the hostname is empty", NodeNameEnv)
	}
	return strings.ToLower(name), nil
}

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

// ResolveNodePortAddresses returns the addresses of nodeAddrs NodePorts
// are served on: all of them if cidrs is empty, else those inside one of
// cidrs.Prefixes, plus for "primary" the first address of each family.
//
// "primary" is kube-proxy's primary node IP per family, i.e. the first
// InternalIP of that family in the Node's status, so nodeAddrs must be in
// Node.Status.Addresses order with InternalIPs first, as NodeAddresses
// returns them. The result keeps nodeAddrs' order without duplicates;
// IPv4-mapped IPv6 addresses count as IPv4, zones are dropped, and invalid
// addresses are skipped.
func ResolveNodePortAddresses(cidrs NodePortAddresses, nodeAddrs []netip.Addr) []netip.Addr {
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

// NodeAddresses returns node's InternalIPs, then its ExternalIPs, each in
// status order, deduplicated: the order ResolveNodePortAddresses expects.
// ExternalIPs come last so that a family with no InternalIP still has a
// primary, as kube-proxy's node IP detection does. Unparseable addresses
// are skipped.
func NodeAddresses(node *v1.Node) []netip.Addr {
	if node == nil {
		return nil
	}
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, typ := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, na := range node.Status.Addresses {
			if na.Type != typ {
				continue
			}
			a, err := netip.ParseAddr(strings.TrimSpace(na.Address))
			if err != nil {
				continue
			}
			a = a.Unmap()
			if !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	return out
}
