package kubelet

import (
	"fmt"
	"net/netip"
	"sync"
)

// Allocator hands out pod IPs from a node's pod CIDR. The first address is
// the gateway on every pod veth, pods get the second address onward. It
// allocates round-robin from the last allocation (like host-local IPAM) so
// that a just-released IP, which may still sit in IPVS or conntrack
// entries, is not handed out again at once.
type Allocator struct {
	mu      sync.Mutex
	prefix  netip.Prefix
	gateway netip.Addr
	first   netip.Addr // first pod address
	last    netip.Addr // last pod address
	next    netip.Addr // where the next search starts
	byIP    map[netip.Addr]string
	byOwner map[string]netip.Addr
}

// NewAllocator parses a pod CIDR such as 10.244.1.0/24.
func NewAllocator(cidr string) (*Allocator, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("pod CIDR %q: %w", cidr, err)
	}
	p = p.Masked()
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits < 2 {
		return nil, fmt.Errorf("pod CIDR %s is too small for a gateway and a pod", p)
	}
	gw := p.Addr().Next()
	last := lastAddr(p)
	if p.Addr().Is4() {
		last = last.Prev() // the broadcast address
	}
	first := gw.Next()
	if !first.IsValid() || last.Less(first) {
		return nil, fmt.Errorf("pod CIDR %s has no room for pods", p)
	}
	return &Allocator{
		prefix: p, gateway: gw, first: first, last: last, next: first,
		byIP: map[netip.Addr]string{}, byOwner: map[string]netip.Addr{},
	}, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Gateway is the pod CIDR's first address.
func (a *Allocator) Gateway() netip.Addr { return a.gateway }

// Prefix is the pod CIDR.
func (a *Allocator) Prefix() netip.Prefix { return a.prefix }

// Allocate returns owner's IP, allocating one if it has none.
func (a *Allocator) Allocate(owner string) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.byOwner[owner]; ok {
		return ip, nil
	}
	ip := a.next
	for {
		if _, used := a.byIP[ip]; !used {
			a.byIP[ip] = owner
			a.byOwner[owner] = ip
			a.next = a.wrap(ip.Next())
			return ip, nil
		}
		ip = a.wrap(ip.Next())
		if ip == a.next {
			return netip.Addr{}, fmt.Errorf("pod CIDR %s is full (%d pods)", a.prefix, len(a.byIP))
		}
	}
}

func (a *Allocator) wrap(ip netip.Addr) netip.Addr {
	if !ip.IsValid() || a.last.Less(ip) {
		return a.first
	}
	return ip
}

// Reserve gives owner a specific IP (a pod's IP from before a restart).
func (a *Allocator) Reserve(owner string, ip netip.Addr) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip.Less(a.first) || a.last.Less(ip) || ip.BitLen() != a.first.BitLen() {
		return fmt.Errorf("%s is not a pod address of %s", ip, a.prefix)
	}
	if cur, ok := a.byOwner[owner]; ok {
		if cur == ip {
			return nil
		}
		return fmt.Errorf("%s already has %s", owner, cur)
	}
	if other, used := a.byIP[ip]; used {
		return fmt.Errorf("%s is in use by %s", ip, other)
	}
	a.byIP[ip] = owner
	a.byOwner[owner] = ip
	return nil
}

// Release frees owner's IP; releasing twice is harmless.
func (a *Allocator) Release(owner string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ip, ok := a.byOwner[owner]; ok {
		delete(a.byOwner, owner)
		delete(a.byIP, ip)
	}
}

// InUse is the number of allocated IPs.
func (a *Allocator) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byIP)
}
