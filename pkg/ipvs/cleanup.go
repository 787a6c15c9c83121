package ipvs

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"

	"k8s.io/klog/v2"
)

// PortRange is an inclusive range of ports.
type PortRange struct {
	First, Last uint16
}

// DefaultNodePortRange is the API server's default
// --service-node-port-range, 30000-32767.
var DefaultNodePortRange = PortRange{First: 30000, Last: 32767}

// Contains reports whether First <= p <= Last.
func (r PortRange) Contains(p uint16) bool { return r.First <= p && p <= r.Last }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// CleanupOptions say what Cleanup may remove besides what is on kube-ipvs0.
type CleanupOptions struct {
	// Excluded reports the addresses whose virtual servers must be left
	// alone (--ipvs-exclude-cidrs). Nil: none.
	Excluded func(netip.Addr) bool
	// NodePortAddresses are the node addresses NodePort virtual servers
	// are put on (--nodeport-addresses resolved against the node's
	// addresses, as for the planner).
	NodePortAddresses []netip.Addr
	// NodePortRange limits which virtual servers on NodePortAddresses are
	// the proxy's: only those with a port in it. The zero value is
	// DefaultNodePortRange.
	NodePortRange PortRange
}

// Cleanup removes the proxy's IPVS state, for --cleanup:
//
//   - every virtual server on an address bound on kube-ipvs0 (ClusterIPs,
//     external and load-balancer IPs): `ipvsadm -D -t VIP:PORT`;
//   - every virtual server on one of opts.NodePortAddresses whose port is in
//     opts.NodePortRange (NodePorts);
//   - then kube-ipvs0 itself, with its addresses: `ip link del kube-ipvs0`.
//
// Upstream flushes the whole table (ipvsadm -C); this removes only what is
// the proxy's, so virtual servers of other programs (keepalived...) on
// other addresses or ports survive, as do virtual servers on excluded
// addresses. What cannot be told apart from another program's is left
// behind: virtual servers on node addresses outside the NodePort range
// (external IPs that are node addresses).
//
// When a virtual server on an excluded address is bound on kube-ipvs0 the
// link is kept, to keep that address local, and only the other addresses
// are unbound. When a deletion fails the link is kept too, so that running
// Cleanup again finds the virtual servers on its addresses. A missing link
// is fine. A nil ipvs (a kernel without IPVS) only removes the link.
// Errors are joined.
func Cleanup(ipvs IPVS, links Links, opts CleanupOptions) error {
	excluded := opts.Excluded
	if excluded == nil {
		excluded = func(netip.Addr) bool { return false }
	}
	ports := opts.NodePortRange
	if ports == (PortRange{}) {
		ports = DefaultNodePortRange
	}
	bound, err := links.Addresses()
	if errors.Is(err, fs.ErrNotExist) {
		bound, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", DummyLinkName, err)
	}
	onLink := make(map[netip.Addr]bool, len(bound))
	for _, addr := range bound {
		onLink[addr] = true
	}
	nodeAddrs := make(map[netip.Addr]bool, len(opts.NodePortAddresses))
	for _, addr := range opts.NodePortAddresses {
		nodeAddrs[addr.Unmap()] = true
	}

	var errs []error
	keepLink := false
	if ipvs != nil {
		vss, err := ipvs.Services()
		if err != nil {
			// Without the list, the link is all that tells ours apart.
			return fmt.Errorf("list IPVS services: %w", err)
		}
		for _, vs := range vss {
			addr := vs.Key.Addr
			ours := onLink[addr] || (nodeAddrs[addr] && ports.Contains(vs.Key.Port))
			if vs.Key.FWMark != 0 {
				ours = ownedKey(vs.Key) // only marks in FWMarkMask
			}
			if !ours {
				continue
			}
			if excluded(addr) {
				if onLink[addr] {
					keepLink = true
				}
				continue
			}
			op := Op{Kind: OpDeleteService, VS: vs}
			klog.V(2).InfoS("Cleanup", "op", op.String())
			if err := ipvs.DeleteService(vs.Key); err != nil {
				errs = append(errs, opError(op, err))
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // the link stays, for the next try
	}
	if !keepLink {
		klog.V(2).InfoS("Cleanup", "op", "ip link del "+DummyLinkName)
		if err := links.DeleteLink(); err != nil {
			return fmt.Errorf("ip link del %s: %w", DummyLinkName, err)
		}
		return nil
	}
	for _, addr := range bound {
		if excluded(addr) {
			continue
		}
		op := Op{Kind: OpDeleteAddress, Addr: addr}
		klog.V(2).InfoS("Cleanup", "op", op.String())
		if err := links.DeleteAddress(addr); err != nil {
			errs = append(errs, opError(op, err))
		}
	}
	return errors.Join(errs...)
}
