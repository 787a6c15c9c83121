package ipvs

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkSocketTimeout bounds each rtnetlink round trip, so a wedged kernel
// call fails the sync instead of hanging it.
const linkSocketTimeout = 30 * time.Second

// KernelLinks manages the dummy link over rtnetlink.
//
// A cold sync binds one address per Service: one socket for all of them
// (not one per call) and the link looked up once (not before every
// address) halve what each costs; the kernel's own share, which grows
// with the addresses already bound, stays.
type KernelLinks struct {
	name string

	mu   sync.Mutex
	h    *netlink.Handle // NETLINK_ROUTE, opened on first use and kept
	link netlink.Link    // the dummy link as last looked up; nil: look it up
}

var _ Links = (*KernelLinks)(nil)

// NewKernelLinks manages the dummy link called name (DummyLinkName).
func NewKernelLinks(name string) *KernelLinks { return &KernelLinks{name: name} }

// locked runs op under l.mu with the kept rtnetlink socket, opened on
// first use.
func (l *KernelLinks) locked(op func(*netlink.Handle) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h == nil {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("opening an rtnetlink socket: %w", err)
		}
		if err := h.SetSocketTimeout(linkSocketTimeout); err != nil {
			h.Close()
			return fmt.Errorf("setting the rtnetlink socket timeout: %w", err)
		}
		l.h = h
	}
	return op(l.h)
}

// EnsureLink is `ip link add kube-ipvs0 type dummy`. The link is left down,
// as upstream does: its addresses are local all the same (the kernel adds
// their local routes whatever the link state; for IPv6 because a dummy link
// is NOARP, which skips duplicate address detection), and a down link gets
// no routes of its own.
func (l *KernelLinks) EnsureLink() error {
	return l.locked(func(h *netlink.Handle) error {
		l.link = nil
		_, err := h.LinkByName(l.name)
		if err == nil {
			return nil
		}
		if !errors.As(err, new(netlink.LinkNotFoundError)) {
			return fmt.Errorf("look up link %s: %w", l.name, err)
		}
		if err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: l.name}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("ip link add %s type dummy: %w", l.name, err)
		}
		return nil
	})
}

// lookup returns the link, looked up once and then kept until an
// operation finds it gone (ENODEV: deleted, perhaps re-created under
// another index). A missing link gives an error wrapping fs.ErrNotExist.
// Callers hold l.mu (locked).
func (l *KernelLinks) lookup(h *netlink.Handle) (netlink.Link, error) {
	if l.link != nil {
		return l.link, nil
	}
	link, err := h.LinkByName(l.name)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil, fmt.Errorf("look up link %s: %w (%w)", l.name, fs.ErrNotExist, err)
		}
		return nil, fmt.Errorf("look up link %s: %w", l.name, err)
	}
	l.link = link
	return link, nil
}

// withLink runs op on the link; should the kept link have gone away
// meanwhile, it looks the link up again and retries once.
func (l *KernelLinks) withLink(op func(*netlink.Handle, netlink.Link) error) error {
	return l.locked(func(h *netlink.Handle) error {
		for attempt := 0; ; attempt++ {
			cached := l.link != nil
			link, err := l.lookup(h)
			if err != nil {
				return err
			}
			err = op(h, link)
			if errors.Is(err, unix.ENODEV) && cached && attempt == 0 {
				l.link = nil
				continue
			}
			return err
		}
	})
}

// DeleteLink is `ip link del kube-ipvs0`, which unbinds its addresses too.
// A missing link is fine; a link of that name that is not a dummy is not
// the proxy's and is left alone, with an error.
func (l *KernelLinks) DeleteLink() error {
	return l.locked(func(h *netlink.Handle) error {
		l.link = nil
		link, err := l.lookup(h)
		l.link = nil
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, ok := link.(*netlink.Dummy); !ok {
			return fmt.Errorf("link %s is a %s, not a dummy link: not deleting it", l.name, link.Type())
		}
		if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			return err
		}
		return nil
	})
}

// Addresses is `ip addr show dev kube-ipvs0`, keeping host prefixes only:
// the proxy binds nothing else, so anything else is not its to remove.
func (l *KernelLinks) Addresses() ([]netip.Addr, error) {
	var out []netip.Addr
	err := l.locked(func(h *netlink.Handle) error {
		// Looked up afresh: a full sync is where a re-created link is noticed.
		l.link = nil
		link, err := l.lookup(h)
		if err != nil {
			return err
		}
		if out, err = hostAddrsOf(link.Attrs().Index); err != nil {
			return fmt.Errorf("list addresses of %s: %w", l.name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sortedAddrs(out), nil
}

// AddAddress is `ip addr add 10.96.0.10/32 dev kube-ipvs0` (/128 for IPv6).
func (l *KernelLinks) AddAddress(addr netip.Addr) error {
	return l.withLink(func(h *netlink.Handle, link netlink.Link) error {
		if err := h.AddrAdd(link, hostAddr(addr)); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		return nil
	})
}

// DeleteAddress is `ip addr del 10.96.0.10/32 dev kube-ipvs0`.
func (l *KernelLinks) DeleteAddress(addr netip.Addr) error {
	return l.withLink(func(h *netlink.Handle, link netlink.Link) error {
		if err := h.AddrDel(link, hostAddr(addr)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return err
		}
		return nil
	})
}

func hostAddr(addr netip.Addr) *netlink.Addr {
	bits := hostBits(addr)
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(addr.AsSlice()), Mask: net.CIDRMask(bits, bits)}}
}
