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

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/conntrack"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/events"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/guard"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/healthcheck"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Config is the node-level configuration of the proxier.
type Config struct {
	// Scheduler for every virtual server ("" = rr).
	Scheduler string
	// Schedulers, when set, probes the schedulers Services ask for in
	// annotations, so that the planner refuses those the kernel cannot
	// load (the Service gets Scheduler and a Warning Event).
	Schedulers *ipvs.Schedulers
	// Families programmed by iptables/ipset. Without IPv6 here IPVS plans
	// no IPv6 virtual server either (ipvs.Config.IPv4Only).
	Families []iptables.Family
	// ClusterCIDRs is --cluster-cidr.
	ClusterCIDRs []netip.Prefix
	// MasqueradeAll is --masquerade-all.
	MasqueradeAll bool
	// NodePortAddresses is --nodeport-addresses (zero: all). Each sync
	// resolves it once against the host's addresses and the Node's
	// primary IPs (NodePortAddresses.NodePortIPs): NodePort virtual
	// servers, the SCTP node-port set entries and the conntrack cleanup
	// all use that one list.
	NodePortAddresses servicecache.NodePortAddresses
	// ExcludeCIDRs is --ipvs-exclude-cidrs.
	ExcludeCIDRs []netip.Prefix
	// LocalFallbackToCluster is --external-traffic-local-fallback.
	LocalFallbackToCluster bool
	// NotLocal gives the --detect-local-mode matches for the node (nil:
	// ClusterCIDR mode).
	NotLocal func(node servicecache.Node) map[iptables.Family][]string
	// Guard is what external, load-balancer and endpoint addresses are
	// checked against before planning (pkg/guard): AllowedCIDRs and
	// ServiceCIDRs from the flags; ClusterCIDRs defaults to ClusterCIDRs
	// above.
	Guard guard.Config
}

// ServiceHealth serves the healthCheckNodePorts of externalTrafficPolicy:
// Local Services (pkg/healthcheck.ServiceHealthServer).
type ServiceHealth interface {
	SyncServices(ports map[servicecache.ServiceKey]uint16)
	SyncEndpoints(counts map[servicecache.ServiceKey]int)
}

// ServiceHealthAddresses is a ServiceHealth told where to listen
// (ServiceHealthServer.SetAddresses): every sync, before SyncServices, with
// --nodeport-addresses resolved as for the NodePorts.
type ServiceHealthAddresses interface {
	SetAddresses(addrs []netip.Addr, all bool)
}

// Options are the proxier's optional parts.
type Options struct {
	// ServiceHealth, when set, is told about health check node ports.
	ServiceHealth ServiceHealth
	// Conntrack, when set, removes stale UDP conntrack entries.
	Conntrack conntrack.Cleaner
	// Events, when set, records a Warning Event on a Service the first
	// time the planner or the guard reports a problem with it.
	Events events.Recorder
	// Sysctls, when set, is called on every full sync to put back the
	// kernel parameters the proxy needs, should something have changed
	// them since the start.
	Sysctls func() error
	// Progress, when set, is called as a sync goes through its phases
	// (the health server's startup rule: a long first sync is alive).
	Progress func()
	// RetryAt, when set, is asked for a sync at the time the earliest
	// Service the kernel refused is due for a retry (runner.TriggerAt).
	RetryAt func(time.Time)
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

	opts Options

	// lastIPVS is the IPVS config of the last full reconcile; a change (a
	// node address came or went) needs another full one. So does a change
	// of the node's name or zone (local endpoints and topology hints).
	lastIPVS   ipvs.Config
	lastNode   servicecache.Node
	reconciled bool
	// lastOK: the last sync succeeded (for telling drift from retries).
	lastOK   bool
	problems []string
	// planProblems and guardProblems report the IPVS planner's and the
	// guard's problems with Services, each once.
	planProblems  problemLog
	guardProblems problemLog
	// kernelProblems reports the Services the kernel refused (ipvs
	// Applier.Failures): their sync failures stay theirs.
	kernelProblems problemLog
	// iptProblems reports the iptables planner's problems with Services
	// (source ranges that fail closed) and set entries a full ipset
	// refused.
	iptProblems problemLog
	// guard drops the addresses that must not be programmed.
	guard guard.Guard
	// iptPlanner re-plans only the changed Services' set entries.
	iptPlanner iptables.Planner

	// ctLast is the last snapshot whose conntrack cleanup succeeded, and
	// ctPrevious whether it is the snapshot just before the current one.
	ctLast     *servicecache.Snapshot
	ctPrevious bool
}

// New returns a proxier. localAddrs lists the host's addresses except
// those on kube-ipvs0.
func New(cfg Config, cache Snapshotter, localAddrs func() ([]netip.Addr, error), ipvsApplier *ipvs.Applier, ipt *iptables.Applier, health HealthUpdater, opts Options) *Proxier {
	if cfg.Guard.ClusterCIDRs == nil {
		cfg.Guard.ClusterCIDRs = cfg.ClusterCIDRs
	}
	return &Proxier{cfg: cfg, cache: cache, localAddrs: localAddrs, ipvs: ipvsApplier, ipt: ipt, health: health, opts: opts,
		planProblems:   problemLog{logMessage: "Service programmed with a workaround"},
		guardProblems:  problemLog{logMessage: "Service address refused"},
		kernelProblems: problemLog{logMessage: "The kernel refused to program a Service; retrying it with backoff", errorLevel: true},
		iptProblems:    problemLog{logMessage: "Service limited by iptables/ipset programming"}}
}

// NodePortIPs are the addresses NodePorts are served on for the given
// snapshot and local addresses (the host's, except kube-ipvs0's).
func (p *Proxier) NodePortIPs(snap *servicecache.Snapshot, local []netip.Addr) []netip.Addr {
	out := p.cfg.NodePortAddresses.NodePortIPs(snap.Node.PrimaryIPs(), local)
	if p.ipv4Only() {
		out = slices.DeleteFunc(out, netip.Addr.Is6)
	}
	return out
}

// healthCheckAddrs is where the health check node ports listen: as
// upstream, on the NodePort addresses of a family whose
// --nodeport-addresses does not match all of its addresses, else on all of
// them; on IPv4 alone when IPVS is (ipv4Only).
func (p *Proxier) healthCheckAddrs(snap *servicecache.Snapshot, local []netip.Addr) ([]netip.Addr, bool) {
	addrs, all := p.cfg.NodePortAddresses.HealthCheckAddrs(snap.Node.PrimaryIPs(), local)
	if !p.ipv4Only() {
		return addrs, all
	}
	if all {
		return []netip.Addr{netip.IPv4Unspecified()}, false
	}
	return slices.DeleteFunc(addrs, netip.Addr.Is6), false
}

// ipv4Only: without IPv6 iptables/ipsets (ip6tables unusable, or IPv6 off
// in the kernel) IPVS programs no IPv6 either, as upstream then runs
// single-stack.
func (p *Proxier) ipv4Only() bool { return !slices.Contains(p.cfg.Families, iptables.IPv6) }

// IPVSConfig is the planner configuration for the given local addresses
// and NodePort addresses (NodePortIPs).
func (p *Proxier) IPVSConfig(local, nodePortIPs []netip.Addr) ipvs.Config {
	var available func(string) bool
	if p.cfg.Schedulers != nil {
		available = p.cfg.Schedulers.Available
	}
	return ipvs.Config{
		Scheduler:              p.cfg.Scheduler,
		SchedulerAvailable:     available,
		NodePortAddresses:      nodePortIPs,
		IPv4Only:               p.ipv4Only(),
		LocalAddresses:         local,
		ExcludeCIDRs:           p.cfg.ExcludeCIDRs,
		LocalFallbackToCluster: p.cfg.LocalFallbackToCluster,
		// Service ports keep their firewall marks from sync to sync.
		HeldMarks: p.ipvs.HeldMarks(),
	}
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
	snap = p.filter(snap)
	nodePortIPs := p.NodePortIPs(snap, local)
	ic := p.IPVSConfig(local, nodePortIPs)
	sameNode := snap.Node.Name == p.lastNode.Name && snap.Node.Zone == p.lastNode.Zone
	if !p.reconciled || !sameIPVSConfig(ic, p.lastIPVS) || !sameNode {
		full = true
	}
	// A periodic resync after a successful sync, with nothing changed in
	// the API or the node: whatever it changes in the kernel was drift.
	quiet := full && p.reconciled && p.lastOK && len(snap.Changed) == 0 && sameIPVSConfig(ic, p.lastIPVS) && sameNode
	p.ipvs.TakeChanged() // draining deletions between syncs are not this sync's

	var errs []error
	if full && p.opts.Sysctls != nil {
		if err := p.opts.Sysctls(); err != nil {
			errs = append(errs, fmt.Errorf("sysctls: %w", err))
		}
	}
	ipvsOK := false
	phase := time.Now()
	if full {
		// A quiet resync reconciles what the applier already holds
		// instead of planning every Service again (nothing changed).
		done, err := false, error(nil)
		if quiet {
			done, err = p.ipvs.Resync()
		}
		if !done {
			p.probeSchedulers(snap, nil)
			d := ipvs.Plan(snap, ic)
			p.progress()
			p.planProblems.report(p.opts.Events, snap, nil, planProblems(d.Problems))
			err = p.ipvs.Reconcile(d)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("ipvs: %w", err))
		} else {
			p.reconciled, p.lastIPVS, p.lastNode, ipvsOK = true, ic, snap.Node, true
		}
	} else {
		p.probeSchedulers(snap, snap.Changed)
		// What the changed Services held lets the planner hand an address
		// they release to the next claimant by age (d.Replanned).
		d := ipvs.PlanChanges(snap, snap.Changed, p.ipvs.Held(snap.Changed), ic)
		keys := snap.Changed
		if len(d.Replanned) > 0 { // disjoint from snap.Changed
			keys = slices.Concat(snap.Changed, d.Replanned)
			slices.SortFunc(keys, servicecache.ServiceKey.Compare)
		}
		p.planProblems.report(p.opts.Events, snap, keys, planProblems(d.Problems))
		if err := p.ipvs.ApplyServices(keys, d); err != nil {
			errs = append(errs, fmt.Errorf("ipvs: %w", err))
		} else {
			ipvsOK = true
		}
	}
	failed := p.reportKernelFailures(snap)
	p.progress()
	ipvsTook := time.Since(phase)
	phase = time.Now()
	if p.opts.ServiceHealth != nil {
		if sa, ok := p.opts.ServiceHealth.(ServiceHealthAddresses); ok {
			sa.SetAddresses(p.healthCheckAddrs(snap, local))
		}
		ports, counts := healthcheck.LocalEndpointCounts(snap)
		p.opts.ServiceHealth.SyncServices(ports)
		p.opts.ServiceHealth.SyncEndpoints(counts)
	}
	// Stale UDP conntrack entries go once IPVS no longer points at the
	// old endpoints (else the next packet would recreate them).
	if p.opts.Conntrack != nil {
		if ipvsOK {
			p.cleanConntrack(snap, ic.NodePortAddresses)
		} else {
			p.ctPrevious = false
		}
	}

	conntrackTook := time.Since(phase)
	phase = time.Now()
	if full && !quiet {
		// Re-plan every Service after a failure or a change of settings;
		// a quiet periodic resync re-plans nothing.
		p.iptPlanner.Reset()
	}
	p.progress()
	d := p.iptPlanner.Plan(snap, iptables.Config{
		Families:       p.cfg.Families,
		ClusterCIDRs:   p.cfg.ClusterCIDRs,
		MasqueradeAll:  p.cfg.MasqueradeAll,
		NotLocal:       p.notLocal(snap.Node),
		NodePortIPs:    nodePortIPs,
		LocalAddresses: local,
		NodeIPs:        snap.Node.PrimaryIPs(),
		// The marks of the firewall-mark virtual servers IPVS now has,
		// whether this sync's IPVS part succeeded or not.
		ExternalLocalMarks: markEntries(p.ipvs.MarkEntries()),
	})
	if !slices.Equal(d.Problems, p.problems) {
		for _, pr := range d.Problems {
			klog.InfoS("Skipped in iptables/ipset programming", "problem", pr)
		}
		p.problems = d.Problems
	}
	// A full sync reads the sets and chains back and repairs drift; an
	// incremental one changes only what differs from the last apply.
	p.progress()
	apply := p.ipt.ApplyIncremental
	if full {
		apply = p.ipt.Apply
	}
	changes, err := apply(d)
	if err != nil {
		errs = append(errs, fmt.Errorf("iptables/ipset: %w", err))
	}
	// d.ServiceProblems and changes.Refused are complete every sync (the
	// planner keeps every Service's; refused entries are retried by every
	// apply), hence nil keys.
	p.iptProblems.report(p.opts.Events, snap, nil, iptProblems(d.ServiceProblems, changes.Refused))
	for _, r := range changes.Refused {
		for _, k := range r.Services {
			failed[k] = struct{}{}
		}
	}
	metrics.ServicesFailed.Set(float64(len(failed)))

	iptablesTook := time.Since(phase)
	ipvsChanged := p.ipvs.TakeChanged()
	setsChanged := changes.EntriesAdded + changes.EntriesDeleted
	chainsChanged := len(changes.ChainsWritten) + len(changes.JumpsInserted)
	metrics.SyncObjectsChanged.WithLabelValues(metrics.SubsystemIPVS).Observe(float64(ipvsChanged))
	metrics.SyncObjectsChanged.WithLabelValues(metrics.SubsystemIPSet).Observe(float64(setsChanged))
	metrics.SyncObjectsChanged.WithLabelValues(metrics.SubsystemIPTables).Observe(float64(chainsChanged))
	if quiet {
		for sub, n := range map[string]int{metrics.SubsystemIPVS: ipvsChanged, metrics.SubsystemIPSet: setsChanged, metrics.SubsystemIPTables: chainsChanged} {
			if n > 0 {
				metrics.DriftRepairedTotal.WithLabelValues(sub).Add(float64(n))
				klog.InfoS("Repaired kernel state changed outside the proxy", "subsystem", sub, "objects", n)
			}
		}
	}
	p.lastOK = len(errs) == 0

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
	// From the change in the API (the EndpointSlice controller's trigger
	// time) to the kernel programmed, as upstream measures it.
	for _, t := range snap.TriggerTimes {
		for _, f := range p.cfg.Families {
			metrics.NetworkProgrammingLatency.WithLabelValues(string(v1IPFamily(f))).Observe(metrics.SinceInSeconds(t))
		}
	}
	for _, f := range p.cfg.Families {
		metrics.SyncProxyRulesLastTimestamp.WithLabelValues(string(v1IPFamily(f))).SetToCurrentTime()
		if p.health != nil {
			p.health.Updated(v1IPFamily(f))
		}
	}
	klog.V(2).InfoS("Synced", "full", full, "services", len(snap.Services), "changed", len(snap.Changed),
		"iptablesChanged", !changes.Empty(), "elapsed", time.Since(start),
		"ipvs", ipvsTook, "conntrack", conntrackTook, "iptables", iptablesTook)
	return nil
}

func (p *Proxier) progress() {
	if p.opts.Progress != nil {
		p.opts.Progress()
	}
}

// probeSchedulers has the kernel probed for the schedulers the Services
// named by keys (every Service when nil) ask for, once per name, before
// they are planned.
func (p *Proxier) probeSchedulers(snap *servicecache.Snapshot, keys []servicecache.ServiceKey) {
	if p.cfg.Schedulers == nil {
		return
	}
	if keys != nil && len(keys) == 0 {
		return
	}
	p.cfg.Schedulers.Ensure(ipvs.AnnotatedSchedulers(snap, keys)...)
}

// reportKernelFailures reports the Services the IPVS kernel refused, each
// problem once (a log line and a Warning Event), asks for a sync when the
// earliest is due for a retry, and returns them (for the gauge).
func (p *Proxier) reportKernelFailures(snap *servicecache.Snapshot) map[servicecache.ServiceKey]struct{} {
	failures := p.ipvs.Failures()
	list := make([]problem, len(failures))
	services := map[servicecache.ServiceKey]struct{}{}
	for i, f := range failures {
		list[i] = problem{Service: f.Service, Reason: f.Reason, Message: f.Message}
		services[f.Service] = struct{}{}
	}
	for _, k := range p.kernelProblems.report(p.opts.Events, snap, nil, list) {
		for _, pr := range list {
			if pr.Service == k {
				metrics.ServicesFailedTotal.WithLabelValues(pr.Reason).Inc()
			}
		}
	}
	if next := p.ipvs.NextRetry(); !next.IsZero() && p.opts.RetryAt != nil {
		p.opts.RetryAt(next)
	}
	return services
}

// cleanConntrack removes stale UDP conntrack entries of the Services that
// changed since the last successful cleanup. Failures are logged: stale
// entries expire by themselves, and the next sync tries again.
func (p *Proxier) cleanConntrack(snap *servicecache.Snapshot, nodePortAddrs []netip.Addr) {
	old := p.ctLast
	var changed []servicecache.ServiceKey
	switch {
	case old == nil:
		changed = conntrack.Changed(nil, snap)
	case p.ctPrevious:
		changed = snap.Changed
	default:
		changed = conntrack.Changed(old, snap)
	}
	filters := conntrack.StaleEntries(old, snap, changed, nodePortAddrs)
	if n, err := p.opts.Conntrack.DeleteStale(filters); err != nil {
		klog.ErrorS(err, "Deleting stale conntrack entries", "deleted", n)
		p.ctPrevious = false
		return
	} else if n > 0 {
		klog.V(2).InfoS("Deleted stale conntrack entries", "entries", n)
	}
	p.ctLast, p.ctPrevious = snap, true
}

// filter drops the addresses the guard refuses from snap and reports them.
// A Service whose refusals differ from the last sync's joins Changed even
// if it did not change itself (a VIP of another Service it was checked
// against came or went), so that an incremental sync re-plans it.
func (p *Proxier) filter(snap *servicecache.Snapshot) *servicecache.Snapshot {
	out, probs := p.guard.Filter(snap, p.cfg.Guard)
	list := make([]problem, len(probs))
	for i, pr := range probs {
		list[i] = problem(pr)
	}
	changed := p.guardProblems.report(p.opts.Events, out, nil, list)
	if extra := slices.DeleteFunc(changed, func(k servicecache.ServiceKey) bool {
		_, found := slices.BinarySearchFunc(snap.Changed, k, servicecache.ServiceKey.Compare)
		return found
	}); len(extra) > 0 {
		c := *out
		c.Changed = append(slices.Clone(snap.Changed), extra...)
		slices.SortFunc(c.Changed, servicecache.ServiceKey.Compare)
		out = &c
	}
	return out
}

func (p *Proxier) notLocal(node servicecache.Node) map[iptables.Family][]string {
	if p.cfg.NotLocal == nil {
		return nil
	}
	return p.cfg.NotLocal(node)
}

func v1IPFamily(f iptables.Family) v1.IPFamily {
	if f == iptables.IPv6 {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}

func sameIPVSConfig(a, b ipvs.Config) bool {
	return a.Scheduler == b.Scheduler && slices.Equal(a.NodePortAddresses, b.NodePortAddresses) &&
		slices.Equal(a.LocalAddresses, b.LocalAddresses) && slices.Equal(a.ExcludeCIDRs, b.ExcludeCIDRs) &&
		a.LocalFallbackToCluster == b.LocalFallbackToCluster
}

// markEntries turns the IPVS applier's mark entries into members of
// KUBE-EXTERNAL-LOCAL-MARK.
func markEntries(marks []ipvs.MarkEntry) []iptables.Entry {
	if len(marks) == 0 {
		return nil
	}
	out := make([]iptables.Entry, 0, len(marks))
	for _, m := range marks {
		proto, ok := iptablesProto(m.Key.Proto)
		if !ok {
			continue
		}
		out = append(out, iptables.Entry{IP: m.Key.Addr, Proto: proto, Port: m.Key.Port, SkbMark: m.Mark, SkbMarkMask: ipvs.FWMarkMask})
	}
	return out
}

func iptablesProto(p ipvs.Proto) (iptables.Proto, bool) {
	switch p {
	case ipvs.ProtoTCP:
		return iptables.ProtoTCP, true
	case ipvs.ProtoUDP:
		return iptables.ProtoUDP, true
	case ipvs.ProtoSCTP:
		return iptables.ProtoSCTP, true
	}
	return 0, false
}
