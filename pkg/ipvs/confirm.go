package ipvs

import (
	"fmt"

	"k8s.io/klog/v2"
)

// unsure tells whether the kernel read must be confirmed before acting on
// it: a virtual server the applier knows is missing from it, or it would
// unbind an address. The kernel's service dump is not a snapshot: it walks
// one table shared by every network namespace by position, so changes in
// another namespace (another node of the lab, a container running its own
// IPVS) during the dump can shift a server out of it. Unbinding its address
// on such a read would leave the server behind, no longer recognisable as
// ours.
func (a *Applier) unsure(kernel *State, d *Desired) bool {
	for key := range a.observed {
		if kernel.VirtualServers[key] == nil {
			return true
		}
	}
	want := sortedIfNeeded(d.Addresses)
	i := 0
	for _, addr := range kernel.Addresses {
		for i < len(want) && want[i].Less(addr) {
			i++
		}
		if i == len(want) || want[i] != addr {
			return true
		}
	}
	return false
}

// confirmServices lists the virtual servers once more (`ipvsadm -Ln`) and
// adds those the first read missed to kernel. A server deleted between
// the two reads is kept: deleting it again fails and the retry reads anew.
func confirmServices(ipvs IPVS, kernel *State) error {
	vss, err := ipvs.Services()
	if err != nil {
		return fmt.Errorf("list IPVS services: %w", err)
	}
	missed := 0
	for _, vs := range vss {
		if vs != nil && kernel.VirtualServers[vs.Key] == nil {
			kernel.VirtualServers[vs.Key] = vs
			missed++
		}
	}
	if missed > 0 {
		klog.InfoS("The IPVS listing missed virtual servers that a second listing shows (changed during the dump)", "missed", missed)
	}
	return nil
}
