// Package proxy ties the pieces together: it takes a snapshot of the
// Services, plans the IPVS and iptables/ipset state for it, and has the
// appliers make the kernel match. Sync is what the runner calls.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Config is the node-level configuration of the proxier.
type Config struct {
	// Scheduler for every virtual server ("" = rr).
	Scheduler string
	// Families programmed by iptables/ipset (IPVS is one table for both).
	Families []iptables.Family
	// ClusterCIDRs is --cluster-cidr.
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll is --masquerade-all.
	MasqueradeAll bool
	// NodePortCIDRs is --nodeport-addresses as prefixes (empty: all).
	NodePortCIDRs []netip.Prefix
	// NodePortAddresses picks the node addresses NodePort virtual servers
	// go on, given the node's addresses (from the Node object).
	NodePortAddresses func(nodeAddrs []netip.Addr) []netip.Addr
}

// Snapshotter is the service cache as the proxier sees it.
type Snapshotter interface {
	Snapshot() *servicecache.Snapshot
}

// HealthUpdater is told when a sync succeeded (the health server).
type HealthUpdater interface {
	Updated(family v1.IPFamily)
}

// Proxier syncs the kernel with the Services.
type Proxier struct {
	cfg        Config
	cache      Snapshotter
	localAddrs func() ([]netip.Addr, error)
	ipvs       *ipvs.Applier
	ipt        *iptables.Applier
	health     HealthUpdater

	// lastIPVS is the IPVS config of the last full reconcile; a change (a
	// node address came or went) needs another full one.
	lastIPVS   ipvs.Config
	reconciled bool
	problems   []string
}

// New returns a proxier. localAddrs lists the host's addresses except
// those on kube-ipvs0.
func New(cfg Config, cache Snapshotter, localAddrs func() ([]netip.Addr, error), ipvsApplier *ipvs.Applier, ipt *iptables.Applier, health HealthUpdater) *Proxier {
	if cfg.NodePortAddresses == nil {
		cfg.NodePortAddresses = func(a []netip.Addr) []netip.Addr { return a }
	}
	return &Proxier{cfg: cfg, cache: cache, localAddrs: localAddrs, ipvs: ipvsApplier, ipt: ipt, health: health}
}

// Sync makes the kernel match the current snapshot. A full sync re-reads
// the kernel and repairs drift; otherwise only the changed Services' virtual
// servers are touched. It is never called concurrently (the runner's loop).
func (p *Proxier) Sync(ctx context.Context, full bool) error {
	start := time.Now()
	snap := p.cache.Snapshot()
	if snap == nil {
		return errors.New("sync before the service cache has synced")
	}
	local, err := p.localAddrs()
	if err != nil {
		return fmt.Errorf("listing the node's addresses: %w", err)
	}
	ic := ipvs.Config{
		Scheduler:         p.cfg.Scheduler,
		NodePortAddresses: p.cfg.NodePortAddresses(snap.Node.Addresses),
		LocalAddresses:    local,
	}
	if !p.reconciled || !sameIPVSConfig(ic, p.lastIPVS) {
		full = true
	}

	var errs []error
	if full {
		if err := p.ipvs.Reconcile(ipvs.Plan(snap, ic)); err != nil {
			errs = append(errs, fmt.Errorf("ipvs: %w", err))
		} else {
			p.reconciled, p.lastIPVS = true, ic
		}
	} else if err := p.ipvs.ApplyServices(snap.Changed, ipvs.PlanServices(snap, snap.Changed, ic)); err != nil {
		errs = append(errs, fmt.Errorf("ipvs: %w", err))
	}

	d := iptables.Plan(snap, iptables.Config{
		Families:          p.cfg.Families,
		ClusterCIDRs:      p.cfg.ClusterCIDRs,
		MasqueradeAll:     p.cfg.MasqueradeAll,
		NodePortAddresses: p.cfg.NodePortCIDRs,
		LocalAddresses:    local,
		NodeIPs:           primaryIPs(snap.Node.Addresses),
	})
	if !slices.Equal(d.Problems, p.problems) {
		for _, pr := range d.Problems {
			klog.InfoS("Skipped in iptables/ipset programming", "problem", pr)
		}
		p.problems = d.Problems
	}
	changes, err := p.ipt.Apply(d)
	if err != nil {
		errs = append(errs, fmt.Errorf("iptables/ipset: %w", err))
	}

	elapsed := metrics.SinceInSeconds(start)
	for _, f := range p.cfg.Families {
		fam := string(v1IPFamily(f))
		metrics.SyncProxyRulesLatency.WithLabelValues(fam).Observe(elapsed)
		if full {
			metrics.SyncFullProxyRulesLatency.WithLabelValues(fam).Observe(elapsed)
		} else {
			metrics.SyncPartialProxyRulesLatency.WithLabelValues(fam).Observe(elapsed)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, f := range p.cfg.Families {
		metrics.SyncProxyRulesLastTimestamp.WithLabelValues(string(v1IPFamily(f))).SetToCurrentTime()
		if p.health != nil {
			p.health.Updated(v1IPFamily(f))
		}
	}
	klog.V(2).InfoS("Synced", "full", full, "services", len(snap.Services), "changed", len(snap.Changed),
		"iptablesChanged", !changes.Empty(), "elapsed", time.Since(start))
	return nil
}

func v1IPFamily(f iptables.Family) v1.IPFamily {
	if f == iptables.IPv6 {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}

// primaryIPs returns the first address of each family.
func primaryIPs(addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	var v4, v6 bool
	for _, a := range addrs {
		switch {
		case a.Is4() && !v4:
			out, v4 = append(out, a), true
		case a.Is6() && !v6:
			out, v6 = append(out, a), true
		}
	}
	return out
}

func sameIPVSConfig(a, b ipvs.Config) bool {
	return a.Scheduler == b.Scheduler && slices.Equal(a.NodePortAddresses, b.NodePortAddresses) &&
		slices.Equal(a.LocalAddresses, b.LocalAddresses)
}
