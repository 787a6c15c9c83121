package ipvs

import (
	"maps"
	"net/netip"
	"slices"

	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
)

// Known is the desired state the applier holds: the last Reconcile's plan
// with every ApplyServices since, which is what Plan computes for the same
// Services as long as no plan applied since the last Reconcile had a
// Conflict (Plan and PlanChanges settle them alike, by age, when the
// caller passes what the changed Services held). A
// periodic resync with nothing changed reconciles it instead of planning
// every Service again. Nil before the first Reconcile or after a conflict.
// It has no Problems; the caller must not modify it.
func (a *Applier) Known() *Desired {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.synced || !a.knownOK {
		return nil
	}
	d := a.lastFull
	d.VirtualServers = maps.Clone(a.desired)
	d.ByService = a.byService
	d.Addresses = make([]netip.Addr, 0, len(a.addrRefs))
	for addr, n := range a.addrRefs {
		if n > 0 {
			d.Addresses = append(d.Addresses, addr)
		}
	}
	slices.SortFunc(d.Addresses, netip.Addr.Compare)
	return &d
}

// Resync is the periodic full reconcile when nothing changed since the
// last one: Reconcile(Known()). When that last Reconcile found nothing to
// change, nothing has been changed since, and the kernel's table and the
// dummy link's addresses digest to what it read, nothing drifted: the
// kernel is read without building, sorting or comparing the table (at
// 10,000 Services a third of a full reconcile's CPU, and a tenth of its
// garbage). Otherwise it reconciles against Known. done is false when
// Known has nothing (the caller plans and calls Reconcile).
func (a *Applier) Resync() (done bool, err error) {
	if a.unchanged() {
		return true, nil
	}
	d := a.Known()
	if d == nil {
		return false, nil
	}
	return true, a.Reconcile(d)
}

// unchanged reports whether the kernel still reads as the last Reconcile,
// which found nothing to change, read it.
func (a *Applier) unchanged() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.cleanOK || !a.synced || !a.knownOK || len(a.draining) > 0 || len(a.retryVS) > 0 || len(a.retryAddrs) > 0 {
		return false
	}
	if err := a.links.EnsureLink(); err != nil {
		return false // Reconcile reports it
	}
	// ipvsadm -Sn; ip addr show dev kube-ipvs0 (digested, not kept)
	metrics.NetlinkOperationsTotal.WithLabelValues(metrics.SubsystemIPVS, metrics.OpList).Inc()
	sum, err := kernelDigest(a.ipvs, a.links)
	if err != nil {
		klog.V(2).InfoS("Reconciling IPVS in full: the kernel could not be digested", "err", err)
		return false
	}
	return sum == a.clean
}

// expectedDigest is the digestState the kernel should read as once every
// op of a Reconcile has succeeded: others (the digest of the servers
// that are not the applier's, as read) plus what the applier now holds.
func (a *Applier) expectedDigest(others uint64) uint64 {
	sum := others
	for _, vs := range a.observed {
		sum += digestVS(vs)
	}
	var addrs uint64
	for addr := range a.addrs {
		addrs += hashAddr(addr)
	}
	return withAddrs(sum, addrs)
}
