//go:build linux

package ipvs

import (
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Services is `ipvsadm -Sn`. The IPv4 table comes over the IPVS socket
// options: every service in one call, made under the kernel's IPVS mutex
// (a consistent listing), and each service's destinations in one call
// more, as binary records. A genl service dump then finds the IPv6
// services, whose destinations come from /proc/net/ip_vs when there are
// many, or one netlink dump per service; once a dump finds none and this
// process has added none since, it is skipped (see noIPv6). Should the
// socket options fail, every later read is the netlink dump plus
// /proc/net/ip_vs (servicesNetlink).
//
// In the emulated lab VM at 10,000 Services (12,001 virtual servers,
// 60,001 real servers) the socket options take 0.2 s where the netlink
// dump and /proc/net/ip_vs took 1.2 s.
func (k *KernelIPVS) Services() ([]*VirtualServer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.so != nil {
		out, err := k.servicesFast()
		if err == nil {
			sortServices(out)
			return out, nil
		}
		klog.InfoS("Reading IPVS over netlink and /proc/net/ip_vs from now on", "reason", err)
		k.dropFastReads()
	}
	return k.servicesNetlink()
}

// Digest is digestServices(Services()) without building the table: the
// IPv4 records are hashed as the socket options return them (see
// sockoptReader.digest4). IPv6 services, when there are any, are listed
// as Services lists them. Without the socket options it digests a
// netlink listing.
func (k *KernelIPVS) Digest() (uint64, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.so == nil {
		vss, err := k.servicesNetlink()
		if err != nil {
			return 0, err
		}
		return digestServices(vss), nil
	}
	sum, err := k.so.digest4()
	if err != nil {
		return 0, err
	}
	v6, err := k.servicesIPv6()
	if err != nil {
		return 0, err
	}
	return sum + digestServices(v6), nil
}

// manyIPv6 is the number of IPv6 services from which one read of
// /proc/net/ip_vs (whose cost grows with the whole table) is cheaper than
// a netlink destination dump per IPv6 service.
const manyIPv6 = 256

func (k *KernelIPVS) servicesFast() ([]*VirtualServer, error) {
	out, _, err := k.so.services4()
	if err != nil {
		return nil, err
	}
	v6, err := k.servicesIPv6()
	if err != nil {
		return nil, err
	}
	return append(out, v6...), nil
}

// servicesIPv6 lists the IPv6 virtual servers with their real servers,
// unless noIPv6 says there are none.
func (k *KernelIPVS) servicesIPv6() ([]*VirtualServer, error) {
	if k.noIPv6 {
		return nil, nil
	}
	v6, err := k.services6()
	if err != nil {
		return nil, err
	}
	k.noIPv6 = len(v6) == 0
	var fromProc map[VSKey][]RealServer
	if len(v6) >= manyIPv6 {
		fromProc = k.procDestinations()
	}
	for _, vs := range v6 {
		if err := k.fillDestinations(vs, fromProc); err != nil {
			return nil, err
		}
	}
	return v6, nil
}

// services6 is the genl service dump (`ipvsadm -Ln` without the
// destinations), keeping the IPv6 TCP, UDP and SCTP services.
func (k *KernelIPVS) services6() ([]*VirtualServer, error) {
	req := nl.NewNetlinkRequest(int(k.family), unix.NLM_F_DUMP)
	req.Sockets = k.genl
	req.AddData(&nl.Genlmsg{Command: genlCmdGetService, Version: 1})
	req.AddData(nl.NewRtAttr(genlAttrService, nil))
	var out []*VirtualServer
	var parseErr error
	err := req.ExecuteIter(unix.NETLINK_GENERIC, 0, func(msg []byte) bool {
		if len(msg) < nl.SizeofGenlmsg {
			return true
		}
		vs, err := parseGenlService6(msg[nl.SizeofGenlmsg:])
		if err != nil {
			parseErr = err
			return false
		}
		if vs != nil {
			out = append(out, vs)
		}
		return true
	})
	if err == nil {
		err = parseErr
	}
	if err != nil {
		return nil, fmt.Errorf("IPVS service dump: %w", err)
	}
	return out, nil
}

// fillDestinations sets vs.RealServers from fromProc, or from a netlink
// destination dump when fromProc does not have vs.
func (k *KernelIPVS) fillDestinations(vs *VirtualServer, fromProc map[VSKey][]RealServer) error {
	if rss, ok := fromProc[vs.Key]; ok {
		vs.RealServers = rss
		return nil
	}
	dsts, err := k.h.GetDestinations(toLibKey(vs.Key))
	if err != nil {
		return fmt.Errorf("list destinations of %s: %w", vs.Key, err)
	}
	vs.RealServers = make([]RealServer, 0, len(dsts))
	for _, d := range dsts {
		if rs, ok := fromLibDestination(d); ok {
			vs.RealServers = append(vs.RealServers, rs)
		}
	}
	return nil
}

// servicesNetlink is `ipvsadm -Sn` without the socket options: one service
// dump over netlink, then every destination from one read of
// /proc/net/ip_vs. The kernel has no netlink request for all destinations
// at once, and one destination dump per service costs a round trip each
// (seconds at 10,000 Services): a service the file does not show (created
// in between, or the file unreadable) has its destinations dumped over
// netlink.
func (k *KernelIPVS) servicesNetlink() ([]*VirtualServer, error) {
	svcs, err := k.h.GetServices()
	if err != nil {
		return nil, err
	}
	var fromProc map[VSKey][]RealServer
	if len(svcs) > 0 {
		fromProc = k.procDestinations()
	}
	out := make([]*VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		vs, ok := fromLibService(s)
		if !ok {
			continue // firewall mark or unknown protocol: never ours
		}
		if err := k.fillDestinations(vs, fromProc); err != nil {
			return nil, err
		}
		out = append(out, vs)
	}
	sortServices(out)
	return out, nil
}

// procDestinations is `cat /proc/net/ip_vs`: every virtual server's real
// servers (see parseProcIPVS), read from a thread in the socket's network
// namespace; nil when that cannot be done.
func (k *KernelIPVS) procDestinations() map[VSKey][]RealServer {
	if k.netns == "" || k.procFailed {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if ns, err := threadNetns(); err != nil || ns != k.netns {
		return nil // a thread of another namespace (tests switch them)
	}
	m, err := readProcIPVS("/proc/thread-self/net/ip_vs")
	if err != nil {
		k.procFailed = true
		klog.InfoS("Reading IPVS destinations over netlink, one dump per virtual server", "reason", err)
		return nil
	}
	return m
}

func readProcIPVS(path string) (map[VSKey][]RealServer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m, err := parseProcIPVS(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// threadNetns names the calling thread's network namespace
// (`readlink /proc/thread-self/ns/net`, "net:[4026531840]").
func threadNetns() (string, error) {
	return os.Readlink("/proc/thread-self/ns/net")
}
