package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// IPVS is the kernel's virtual server table. Implementations: NewKernelIPVS
// (netlink) and FakeIPVS.
type IPVS interface {
	// Services lists every virtual server with its destinations, sorted,
	// with the kernel-only FlagHashed removed. Firewall-mark services are
	// left out unless their mark is one of the proxy's (OwnedMark).
	Services() ([]*VirtualServer, error)
	// AddService creates vs without destinations (ipvsadm -A).
	AddService(vs *VirtualServer) error
	// UpdateService changes the scheduler, flags and timeout (ipvsadm -E).
	UpdateService(vs *VirtualServer) error
	// DeleteService removes a virtual server and its destinations
	// (ipvsadm -D).
	DeleteService(key VSKey) error
	// AddDestination adds a real server (ipvsadm -a).
	AddDestination(key VSKey, rs RealServer) error
	// UpdateDestination changes a real server's weight or forwarding
	// (ipvsadm -e).
	UpdateDestination(key VSKey, rs RealServer) error
	// DeleteDestination removes a real server (ipvsadm -d).
	DeleteDestination(key VSKey, rs RSKey) error
	// Destinations lists the real servers of one virtual server with their
	// connection counts (ipvsadm -Ln -t VIP:PORT): a dump of that virtual
	// server's destinations only, sorted. A missing virtual server has
	// none, as for the kernel.
	Destinations(key VSKey) ([]DestStats, error)
	// SetTimeouts sets the connection timeouts of the whole table
	// (ipvsadm --set TCP TCPFIN UDP); a zero duration leaves that timeout
	// unchanged, as ipvsadm and upstream do. Durations are rounded up to
	// whole seconds; negative ones are an error.
	SetTimeouts(tcp, tcpFin, udp time.Duration) error
}

// DestStats is a real server as the kernel reports it, with the connection
// counts ipvsadm -Ln shows.
type DestStats struct {
	RealServer
	// ActiveConns is the ActiveConn column: established connections.
	ActiveConns int
	// InactiveConns is the InActConn column: connections in any other
	// state (closing, TIME_WAIT, SYN_RECV...).
	InactiveConns int
}

// Conns is ActiveConn + InActConn: a draining real server is removed once
// it is 0.
func (d DestStats) Conns() int { return d.ActiveConns + d.InactiveConns }

// Links manages the dummy link holding the service addresses.
// Implementations: NewKernelLinks (netlink) and FakeLinks.
type Links interface {
	// EnsureLink creates the dummy link if it is missing.
	EnsureLink() error
	// Addresses lists the host addresses (/32, /128) on the link, sorted.
	// It fails with an error wrapping fs.ErrNotExist when the link is
	// missing.
	Addresses() ([]netip.Addr, error)
	// AddAddress binds a host address; binding a bound one is not an error.
	AddAddress(addr netip.Addr) error
	// DeleteAddress unbinds an address; unbinding an absent one is not an
	// error.
	DeleteAddress(addr netip.Addr) error
	// DeleteLink removes the dummy link and with it every address bound on
	// it (ip link del kube-ipvs0). A missing link is not an error.
	DeleteLink() error
}

// ErrIPVSUnavailable is returned (wrapped) by NewKernelIPVS when the kernel
// has no IPVS.
var ErrIPVSUnavailable = errors.New("IPVS is not available in this kernel (generic netlink family IPVS not found): load the ip_vs module")

// ReadKernel reads everything the kernel holds: all virtual servers (the
// proxy's and others') and the addresses on the dummy link. The result's
// Dump has the same format as a planned Desired's, for end-to-end checks.
func ReadKernel(ipvs IPVS, links Links) (*State, error) {
	vss, err := ipvs.Services()
	if err != nil {
		return nil, fmt.Errorf("list IPVS services: %w", err)
	}
	addrs, err := links.Addresses()
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", DummyLinkName, err)
	}
	st := &State{
		VirtualServers: make(map[VSKey]*VirtualServer, len(vss)),
		Addresses:      sortedIfNeeded(addrs),
	}
	for _, vs := range vss {
		if vs != nil {
			st.VirtualServers[vs.Key] = vs
		}
	}
	return st, nil
}

// sortServices puts a listing in key order, destinations too, so that the
// implementations return the same thing for the same kernel content.
func sortServices(vss []*VirtualServer) {
	slices.SortFunc(vss, func(a, b *VirtualServer) int { return a.Key.Compare(b.Key) })
	for _, vs := range vss {
		sortRealServers(vs.RealServers)
	}
}

// sortRealServers sorts a kernel listing of destinations. The kernel lists
// them newest first, and the proxy adds them in key order, so a listing is
// usually in reverse order: turned around without a sort.
func sortRealServers(rss []RealServer) {
	if slices.IsSortedFunc(rss, compareRS) {
		return
	}
	slices.Reverse(rss)
	if !slices.IsSortedFunc(rss, compareRS) {
		slices.SortFunc(rss, compareRS)
	}
}
