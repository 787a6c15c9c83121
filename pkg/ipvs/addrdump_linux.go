//go:build linux

package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nlattr"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nldump"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// addrDump is what address dumps keep between resyncs: the receive buffer
// (the library allocated 64 KiB per datagram) and the last count, so the
// result is allocated once at its size.
var addrDump struct {
	mu   sync.Mutex
	buf  nldump.Buffer
	last int
}

// hostAddrsOf is `ip -o addr show dev LINK` reduced to the host addresses
// (/32, /128) of the link with index idx: one RTM_GETADDR dump, read in
// place. kube-ipvs0 holds every ClusterIP, and a full resync lists them;
// this costs a third of parsing each address into a netlink.Addr.
//
// The socket is opened per call, in the calling thread's network
// namespace, as the library's package functions do.
func hostAddrsOf(idx int) ([]netip.Addr, error) {
	addrDump.mu.Lock()
	defer addrDump.mu.Unlock()
	c, err := nldump.Open(unix.NETLINK_ROUTE, &addrDump.buf, time.Duration(nl.SocketTimeoutTv.Nano()))
	if err != nil {
		return nil, fmt.Errorf("address dump: %w", err)
	}
	defer c.Close()
	// With strict checking the kernel dumps only link idx's addresses
	// (Linux 4.20); without, it ignores the index and we filter.
	_ = c.SetStrictCheck()
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	msg := nl.NewIfAddrmsg(unix.AF_UNSPEC)
	msg.Index = uint32(idx)
	req.AddData(msg)
	out := make([]netip.Addr, 0, addrDump.last)
	err = c.Execute(req, unix.RTM_NEWADDR, func(msg []byte) error {
		addr, ok, err := parseHostAddr(msg, idx)
		if ok {
			out = append(out, addr)
		}
		return err
	})
	if errors.Is(err, unix.ENODEV) {
		// The strict dump of a link deleted since it was looked up: no
		// addresses, as the unfiltered dump would say.
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("address dump: %w", err)
	}
	addrDump.last = len(out)
	if len(out) == 0 {
		return nil, nil
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
	it := nlattr.Iter(msg[unix.SizeofIfAddrmsg:])
	for it.Next() {
		switch it.Type() {
		case unix.IFA_LOCAL:
			local = it.Value()
		case unix.IFA_ADDRESS:
			address = it.Value()
		}
	}
	if err := it.Err(); err != nil {
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
