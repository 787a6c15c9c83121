//go:build linux

package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	nsh "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// KernelIPVS programs the kernel's IPVS table over generic netlink.
type KernelIPVS struct {
	mu sync.Mutex // one request at a time on the shared socket
	h  *libipvs.Handle
	// netns names the socket's network namespace (the link behind
	// /proc/thread-self/ns/net), "" when unknown: /proc/net/ip_vs is read
	// only from a thread in that namespace.
	netns string
	// procFailed: reading /proc/net/ip_vs failed once (logged once; the
	// netlink reads take over).
	procFailed bool
	// so reads the IPv4 table over the IPVS socket options and genl dumps
	// the services for the IPv6 ones; nil when that cannot be done (then
	// every read is a netlink dump plus /proc/net/ip_vs).
	so     *sockoptReader
	genl   map[int]*nl.SocketHandle
	family uint16
	// noIPv6: the last genl dump found no IPv6 service, and this process
	// has added none since. IPv6 services that appear otherwise are
	// another tool's, and the dump (which costs as much as the whole
	// table) is skipped until one of ours is added.
	noIPv6 bool
}

var _ IPVS = (*KernelIPVS)(nil)

// NewKernelIPVS opens the IPVS netlink socket of the current network
// namespace. It fails with ErrIPVSUnavailable when the kernel has no IPVS.
func NewKernelIPVS() (*KernelIPVS, error) {
	// libipvs.New runs `modprobe -va ip_vs` and looks the family up once per
	// process, so a module loaded later is only seen after a restart. The
	// socket belongs to the calling thread's network namespace.
	runtime.LockOSThread()
	h, err := libipvs.New("")
	netns, _ := threadNetns()
	so, soErr := openSockopt()
	genl, genlErr := nl.GetNetlinkSocketAt(nsh.None(), nsh.None(), unix.NETLINK_GENERIC)
	runtime.UnlockOSThread()
	if err != nil {
		closeReaders(so, genl)
		return nil, fmt.Errorf("open IPVS netlink socket: %w", err)
	}
	// Without IPVS, libipvs.New still succeeds and its calls misbehave
	// (NewService returns nil, GetServices returns nothing, GetConfig
	// panics), so ask generic netlink for the family ourselves.
	fam, err := netlink.GenlFamilyGet("IPVS")
	if err != nil {
		h.Close()
		closeReaders(so, genl)
		return nil, fmt.Errorf("%w: %v", ErrIPVSUnavailable, err)
	}
	k := &KernelIPVS{h: h, netns: netns}
	if err := errors.Join(soErr, genlErr); err != nil {
		closeReaders(so, genl)
		klog.InfoS("Reading IPVS over netlink and /proc/net/ip_vs", "reason", err)
	} else {
		k.so, k.family = so, fam.ID
		k.genl = map[int]*nl.SocketHandle{unix.NETLINK_GENERIC: {Socket: genl}}
	}
	return k, nil
}

func closeReaders(so *sockoptReader, genl *nl.NetlinkSocket) {
	if so != nil {
		so.close()
	}
	if genl != nil {
		genl.Close()
	}
}

// Close releases the netlink socket.
func (k *KernelIPVS) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.h.Close()
	k.dropFastReads()
}

// dropFastReads closes the socket-option and genl readers: every later
// read takes the netlink and /proc/net/ip_vs path.
func (k *KernelIPVS) dropFastReads() {
	if k.so != nil {
		closeReaders(k.so, k.genl[unix.NETLINK_GENERIC].Socket)
		k.so, k.genl = nil, nil
	}
}

// AddService is `ipvsadm -A -t VIP:PORT -s rr [-p TIMEOUT]` (`-A -f MARK`
// for a firewall-mark one).
func (k *KernelIPVS) AddService(vs *VirtualServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if vs.Key.Addr.Is6() {
		k.noIPv6 = false
	}
	return k.h.NewService(toLibService(vs))
}

// probeMarks are the firewall marks a scheduler probe tries, in turn, for
// its throwaway virtual server: values no Service uses (outside
// FWMarkMask, the proxy's own firewall marks) and unlikely to be another
// tool's.
var probeMarks = []uint32{0x6b697076, 0x6b697077, 0x6b697078}

// ProbeScheduler reports whether the kernel can load the scheduler name,
// by adding a throwaway firewall-mark virtual server with it and deleting
// it at once: `ipvsadm -A -f MARK -s NAME; ipvsadm -D -f MARK`. The kernel
// loads ip_vs_NAME on the add, or answers ENOENT when it has no such
// module. The probe's server exists for the time of two netlink calls
// and matches no packet (nothing sets that mark).
func (k *KernelIPVS) ProbeScheduler(name string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	var last error
	for _, mark := range probeMarks {
		svc := &libipvs.Service{FWMark: mark, AddressFamily: unix.AF_INET, Netmask: 0xffffffff, SchedName: name}
		err := k.h.NewService(svc)
		if errors.Is(err, unix.EEXIST) {
			last = err // someone's server on that mark: try the next
			continue
		}
		if err != nil {
			return fmt.Errorf("ipvsadm -A -f %d -s %s: %w", mark, name, err)
		}
		if err := k.h.DelService(svc); err != nil {
			return fmt.Errorf("ipvsadm -D -f %d (the scheduler probe's server): %w", mark, err)
		}
		return nil
	}
	return fmt.Errorf("no free firewall mark for the scheduler probe: %w", last)
}

// UpdateService is `ipvsadm -E -t VIP:PORT -s rr [-p TIMEOUT]`.
func (k *KernelIPVS) UpdateService(vs *VirtualServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.h.UpdateService(toLibService(vs))
}

// DeleteService is `ipvsadm -D -t VIP:PORT`.
func (k *KernelIPVS) DeleteService(key VSKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.h.DelService(toLibKey(key))
}

// AddDestination is `ipvsadm -a -t VIP:PORT -r RIP:RPORT -m -w 1`.
func (k *KernelIPVS) AddDestination(key VSKey, rs RealServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.h.NewDestination(toLibKey(key), toLibDestination(rs))
}

// UpdateDestination is `ipvsadm -e -t VIP:PORT -r RIP:RPORT -m -w W`.
func (k *KernelIPVS) UpdateDestination(key VSKey, rs RealServer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.h.UpdateDestination(toLibKey(key), toLibDestination(rs))
}

// DeleteDestination is `ipvsadm -d -t VIP:PORT -r RIP:RPORT`.
func (k *KernelIPVS) DeleteDestination(key VSKey, rk RSKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.h.DelDestination(toLibKey(key), toLibDestination(RealServer{Key: rk}))
}

// Destinations is `ipvsadm -Ln -t VIP:PORT` (with the ActiveConn and
// InActConn columns): one destination dump of that virtual server only. The
// kernel answers a dump of a missing service with nothing.
func (k *KernelIPVS) Destinations(key VSKey) ([]DestStats, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	dsts, err := k.h.GetDestinations(toLibKey(key))
	if err != nil {
		return nil, err
	}
	out := make([]DestStats, 0, len(dsts))
	for _, d := range dsts {
		if rs, ok := fromLibDestination(d); ok {
			out = append(out, DestStats{RealServer: rs, ActiveConns: d.ActiveConnections, InactiveConns: d.InactiveConnections})
		}
	}
	slices.SortFunc(out, func(a, b DestStats) int { return a.Key.Compare(b.Key) })
	return out, nil
}

// Timeouts is `ipvsadm -L --timeout`.
func (k *KernelIPVS) Timeouts() (Timeouts, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.timeouts()
}

func (k *KernelIPVS) timeouts() (Timeouts, error) {
	// GetConfig panics on a kernel without IPVS (it indexes an empty
	// answer); NewKernelIPVS made sure the family exists.
	c, err := k.h.GetConfig()
	if err != nil {
		return Timeouts{}, err
	}
	return Timeouts{TCP: c.TimeoutTCP, TCPFin: c.TimeoutTCPFin, UDP: c.TimeoutUDP}, nil
}

// SetTimeouts is `ipvsadm --set TCP TCPFIN UDP`, 0 leaving a value as it
// is. The current values are read first, so that nothing is written when
// nothing changes and the zeros stay "unchanged" whatever the kernel makes
// of a zero.
func (k *KernelIPVS) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	if _, err := (Timeouts{}).With(tcp, tcpFin, udp); err != nil {
		return err
	}
	if tcp == 0 && tcpFin == 0 && udp == 0 {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	cur, err := k.timeouts()
	if err != nil {
		return fmt.Errorf("ipvsadm -L --timeout: %w", err)
	}
	next, err := cur.With(tcp, tcpFin, udp)
	if err != nil || next == cur {
		return err
	}
	return k.h.SetConfig(&libipvs.Config{TimeoutTCP: next.TCP, TimeoutTCPFin: next.TCPFin, TimeoutUDP: next.UDP})
}

// toLibKey fills what the kernel looks a service up by. Destination and
// delete requests need nothing more.
func toLibKey(k VSKey) *libipvs.Service {
	if k.FWMark != 0 {
		// ipvsadm -A -f MARK [-6]: the kernel keys it by family and mark.
		s := &libipvs.Service{FWMark: k.FWMark, AddressFamily: unix.AF_INET, Netmask: 0xffffffff}
		if k.Addr.Is6() {
			s.AddressFamily, s.Netmask = unix.AF_INET6, 128
		}
		return s
	}
	s := &libipvs.Service{
		Address:  net.IP(k.Addr.AsSlice()),
		Port:     k.Port,
		Protocol: protoNumber(k.Proto),
	}
	if k.Addr.Is4() {
		s.AddressFamily, s.Netmask = unix.AF_INET, 0xffffffff
	} else {
		s.AddressFamily, s.Netmask = unix.AF_INET6, 128
	}
	return s
}

func toLibService(vs *VirtualServer) *libipvs.Service {
	s := toLibKey(vs.Key)
	s.SchedName = vs.Scheduler
	s.Flags = uint32(vs.Flags &^ FlagHashed)
	s.Timeout = vs.Timeout
	return s
}

func toLibDestination(rs RealServer) *libipvs.Destination {
	d := &libipvs.Destination{
		Address:         net.IP(rs.Key.Addr.AsSlice()),
		Port:            rs.Key.Port,
		Weight:          rs.Weight,
		ConnectionFlags: uint32(rs.Forward),
	}
	if rs.Key.Addr.Is4() {
		d.AddressFamily = unix.AF_INET
	} else {
		d.AddressFamily = unix.AF_INET6
	}
	return d
}

func fromLibService(s *libipvs.Service) (*VirtualServer, bool) {
	if s == nil {
		return nil, false
	}
	if s.FWMark != 0 {
		// Only ours: the kernel reports them as TCP on no address.
		if !OwnedMark(s.FWMark) || (s.AddressFamily != unix.AF_INET && s.AddressFamily != unix.AF_INET6) {
			return nil, false
		}
		return &VirtualServer{
			Key:       FWMarkKey(s.AddressFamily == unix.AF_INET, s.FWMark),
			Scheduler: s.SchedName,
			Flags:     Flags(s.Flags) &^ FlagHashed,
			Timeout:   s.Timeout,
		}, true
	}
	proto, ok := protoFromNumber(s.Protocol)
	if !ok {
		return nil, false
	}
	addr, ok := netip.AddrFromSlice(s.Address)
	if !ok {
		return nil, false
	}
	return &VirtualServer{
		Key:       VSKey{Addr: addr.Unmap(), Port: s.Port, Proto: proto},
		Scheduler: s.SchedName,
		Flags:     Flags(s.Flags) &^ FlagHashed,
		Timeout:   s.Timeout,
	}, true
}

func fromLibDestination(d *libipvs.Destination) (RealServer, bool) {
	if d == nil {
		return RealServer{}, false
	}
	addr, ok := netip.AddrFromSlice(d.Address)
	if !ok {
		return RealServer{}, false
	}
	fwd := Forward(d.ConnectionFlags & libipvs.ConnFwdMask)
	if fwd == libipvs.ConnFwdLocalNode {
		// The kernel turns masquerading to one of its own addresses into
		// "local node" by itself; report what was asked for, or every sync
		// would try to change it back.
		fwd = ForwardMasq
	}
	return RealServer{
		Key:     RSKey{Addr: addr.Unmap(), Port: d.Port},
		Weight:  d.Weight,
		Forward: fwd,
	}, true
}

func protoNumber(p Proto) uint16 {
	switch p {
	case ProtoTCP:
		return unix.IPPROTO_TCP
	case ProtoUDP:
		return unix.IPPROTO_UDP
	case ProtoSCTP:
		return unix.IPPROTO_SCTP
	}
	return 0
}

func protoFromNumber(n uint16) (Proto, bool) {
	switch n {
	case unix.IPPROTO_TCP:
		return ProtoTCP, true
	case unix.IPPROTO_UDP:
		return ProtoUDP, true
	case unix.IPPROTO_SCTP:
		return ProtoSCTP, true
	}
	return 0, false
}
