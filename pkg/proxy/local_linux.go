package proxy

import (
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
)

// LocalAddresses lists the host addresses of every interface except
// kube-ipvs0 (`ip -o addr show | grep -v kube-ipvs0`), sorted. Link-local
// IPv6 addresses are left out: Services never use them.
func LocalAddresses() ([]netip.Addr, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, l := range links {
		if l.Attrs().Name == ipvs.DummyLinkName {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if ip.IsLinkLocalUnicast() {
				continue
			}
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}
