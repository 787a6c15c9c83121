package inspect

import (
	"fmt"
	"slices"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
)

// Kernel is the part of ipvs.IPVS that inspection reads: the virtual
// servers, then each one's real servers with their connection counts.
// ipvs.KernelIPVS (netlink) and ipvs.FakeIPVS implement it.
type Kernel interface {
	Services() ([]*ipvs.VirtualServer, error)
	Destinations(key ipvs.VSKey) ([]ipvs.DestStats, error)
}

// VirtualServer is one IPVS virtual server as the kernel holds it, with its
// real servers and their connection counts: one entry of `ipvsadm -Ln`.
type VirtualServer struct {
	Key       ipvs.VSKey
	Scheduler string
	Flags     ipvs.Flags
	// Timeout is the persistence timeout in seconds (with
	// ipvs.FlagPersistent).
	Timeout uint32
	// RealServers sorted by key.
	RealServers []ipvs.DestStats
}

// ReadKernel reads the whole table the way `ipvsadm -Ln` prints it (the
// ActiveConn and InActConn columns included): a dump of the virtual
// servers, then one destination dump per virtual server, which carries the
// counts. A virtual server deleted between the two dumps is listed without
// real servers. The result is sorted by key.
func ReadKernel(k Kernel) ([]VirtualServer, error) {
	vss, err := k.Services()
	if err != nil {
		return nil, fmt.Errorf("list IPVS virtual servers: %w", err)
	}
	out := make([]VirtualServer, 0, len(vss))
	for _, vs := range vss {
		if vs == nil {
			continue
		}
		dsts, err := k.Destinations(vs.Key)
		if err != nil {
			return nil, fmt.Errorf("list real servers of %s: %w", vs.Key, err)
		}
		dsts = slices.Clone(dsts)
		slices.SortFunc(dsts, func(a, b ipvs.DestStats) int { return a.Key.Compare(b.Key) })
		out = append(out, VirtualServer{
			Key:         vs.Key,
			Scheduler:   vs.Scheduler,
			Flags:       vs.Flags &^ ipvs.FlagHashed,
			Timeout:     vs.Timeout,
			RealServers: dsts,
		})
	}
	slices.SortFunc(out, func(a, b VirtualServer) int { return a.Key.Compare(b.Key) })
	return out, nil
}
