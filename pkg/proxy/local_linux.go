package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
)

// LocalAddresses lists the host addresses of every interface except
// kube-ipvs0 (`ip -o addr show | grep -v kube-ipvs0`), sorted. Link-local
// IPv6 addresses are left out: Services never use them.
//
// Every sync calls it, and kube-ipvs0 holds an address per Service: each
// other link's addresses are dumped on their own (`ip addr show dev
// eth0`), which the kernel filters itself on a socket with strict
// checking (Linux 4.20 and later), so that kube-ipvs0's thousands of
// addresses are never read. Without strict checking, one dump of every
// address is filtered here.
func LocalAddresses() ([]netip.Addr, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("ip link show: %w", err)
	}
	skip := 0
	var indexes []int
	for _, l := range links {
		if l.Attrs().Name == ipvs.DummyLinkName {
			skip = l.Attrs().Index
			continue
		}
		indexes = append(indexes, l.Attrs().Index)
	}
	var out []netip.Addr
	s, err := strictRouteSocket()
	if err == nil {
		defer s.Close()
		for _, idx := range indexes {
			next, err := dumpAddrs(s, idx, skip, out)
			if errors.Is(err, unix.ENODEV) {
				continue // the link went away since it was listed
			}
			if err != nil {
				return nil, fmt.Errorf("ip addr show (link %d): %w", idx, err)
			}
			out = next
		}
	} else {
		if out, err = dumpAddrs(nil, 0, skip, nil); err != nil {
			return nil, fmt.Errorf("ip addr show: %w", err)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// strictRouteSocket opens an rtnetlink socket whose dumps honour the
// request's filters (NETLINK_GET_STRICT_CHK).
func strictRouteSocket() (*nl.NetlinkSocket, error) {
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(s.GetFd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// dumpAddrs appends the usable addresses of link index (all links when s
// is nil: a plain netlink.AddrList) to out, leaving out link skip.
func dumpAddrs(s *nl.NetlinkSocket, index, skip int, out []netip.Addr) ([]netip.Addr, error) {
	keep := func(link int, ip netip.Addr) {
		ip = ip.Unmap()
		if link == skip || !ip.IsValid() || ip.IsLinkLocalUnicast() {
			return
		}
		out = append(out, ip)
	}
	if s == nil {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			keep(a.LinkIndex, ip)
		}
		return out, nil
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	msg := nl.NewIfAddrmsg(unix.AF_UNSPEC)
	msg.Index = uint32(index)
	req.AddData(msg)
	if err := s.Send(req); err != nil {
		return nil, err
	}
	pid, err := s.GetPid()
	if err != nil {
		return nil, err
	}
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Seq != req.Seq || m.Header.Pid != pid {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
					return nil, netlink.ErrDumpInterrupted
				}
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(nl.NativeEndian().Uint32(m.Data[0:4])); errno != 0 {
						return nil, unix.Errno(-errno)
					}
				}
				return out, nil
			case unix.RTM_NEWADDR:
			default:
				continue
			}
			ifa := nl.DeserializeIfAddrmsg(m.Data)
			attrs, err := nl.ParseRouteAttr(m.Data[unix.SizeofIfAddrmsg:])
			if err != nil {
				return nil, err
			}
			// IFA_LOCAL is the address itself on point-to-point links,
			// where IFA_ADDRESS is the peer's.
			var addr, local netip.Addr
			for _, a := range attrs {
				switch a.Attr.Type {
				case unix.IFA_ADDRESS:
					addr, _ = netip.AddrFromSlice(a.Value)
				case unix.IFA_LOCAL:
					local, _ = netip.AddrFromSlice(a.Value)
				}
			}
			if local.IsValid() {
				addr = local
			}
			keep(int(ifa.Index), addr)
		}
	}
}
