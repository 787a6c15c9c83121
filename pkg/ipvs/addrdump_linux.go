//go:build linux

package ipvs

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nlattr"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// hostAddrsOf is `ip -o addr show dev LINK` reduced to the host addresses
// (/32, /128) of the link with index idx: one RTM_GETADDR dump, read in
// place. kube-ipvs0 holds every ClusterIP, and a full resync lists them;
// this costs a third of parsing each address into a netlink.Addr.
func hostAddrsOf(idx int) ([]netip.Addr, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfAddrmsg(unix.AF_UNSPEC))
	var out []netip.Addr
	var parseErr error
	err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWADDR, func(msg []byte) bool {
		addr, ok, err := parseHostAddr(msg, idx)
		if err != nil {
			parseErr = err
			return false
		}
		if ok {
			out = append(out, addr)
		}
		return true
	})
	if err == nil {
		err = parseErr
	}
	if err != nil {
		return nil, fmt.Errorf("address dump: %w", err)
	}
	return out, nil
}

// parseHostAddr reads one RTM_NEWADDR message (struct ifaddrmsg, then the
// attributes): its address, when it is on link idx and a host address.
func parseHostAddr(msg []byte, idx int) (netip.Addr, bool, error) {
	if len(msg) < unix.SizeofIfAddrmsg {
		return netip.Addr{}, false, nil
	}
	prefixLen := int(msg[1])
	if int(binary.NativeEndian.Uint32(msg[4:8])) != idx {
		return netip.Addr{}, false, nil
	}
	var local, address []byte
	if err := nlattr.Walk(msg[unix.SizeofIfAddrmsg:], func(typ uint16, v []byte) error {
		switch typ {
		case unix.IFA_LOCAL:
			local = v
		case unix.IFA_ADDRESS:
			address = v
		}
		return nil
	}); err != nil {
		return netip.Addr{}, false, err
	}
	if local != nil {
		address = local // the peer's address on point-to-point links
	}
	addr, ok := netip.AddrFromSlice(address)
	if !ok {
		return netip.Addr{}, false, nil
	}
	addr = addr.Unmap()
	return addr, prefixLen == hostBits(addr), nil
}
