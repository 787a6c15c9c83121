package app

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/conntrack"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/events"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/healthcheck"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/proxy"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/runner"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/sysctl"
)

// Run is the proxy: it checks the kernel, waits for the informer caches,
// then syncs until ctx is cancelled. On SIGTERM it returns and leaves the
// kernel state in place, so traffic keeps flowing while it restarts.
func Run(ctx context.Context, o *Options) error {
	if o.Cleanup {
		return cleanup(o)
	}
	setGCPercent()
	nodeName, err := o.NodeName()
	if err != nil {
		return err
	}
	clusterCIDRs, err := o.ClusterCIDRPrefixes()
	if err != nil {
		return err
	}
	npa, err := servicecache.ParseNodePortAddresses(o.NodePortAddresses)
	if err != nil {
		return err
	}
	excludeCIDRs, err := o.ExcludeCIDRPrefixes()
	if err != nil {
		return err
	}
	guardCfg, err := o.Guard.Config()
	if err != nil {
		return err
	}
	excluded := func(a netip.Addr) bool { return ipvs.Excluded(ipvs.Config{ExcludeCIDRs: excludeCIDRs}, a) }

	// The kernel first: without IPVS there is nothing to do, and the
	// operator must hear it at once.
	kipvs, err := ipvs.NewKernelIPVS()
	if err != nil {
		return err
	}
	defer kipvs.Close()
	// ipvsadm --set TCP TCPFIN UDP (0 leaves a value as it is).
	if err := kipvs.SetTimeouts(o.IPVSTCPTimeout, o.IPVSTCPFinTimeout, o.IPVSUDPTimeout); err != nil {
		return fmt.Errorf("setting IPVS timeouts: %w", err)
	}
	ensureSysctls := func() error {
		return sysctl.EnsureIPVSSysctls(sysctl.New(), sysctl.IPVSOptions{StrictARP: o.IPVSStrictARP, Logger: klog.FromContext(ctx)})
	}
	if err := ensureSysctls(); err != nil {
		return err
	}
	ct := o.Conntrack.Sysctl(runtime.NumCPU())
	ct.Logger = klog.FromContext(ctx)
	if err := sysctl.EnsureConntrackSysctls(sysctl.New(), ct); err != nil {
		return err
	}
	ipset, err := iptables.NewNetlinkIPSet()
	if err != nil {
		return err
	}
	defer ipset.Close()
	families := []iptables.Family{iptables.IPv4}
	tables := map[iptables.Family]iptables.Tables{}
	t4, err := iptables.NewIptablesTables(iptables.IPv4, iptables.BackendDefault)
	if err != nil {
		return err
	}
	tables[iptables.IPv4] = t4
	if ipv6Enabled() {
		if t6, err := iptables.NewIptablesTables(iptables.IPv6, iptables.BackendDefault); err == nil {
			tables[iptables.IPv6] = t6
			families = append(families, iptables.IPv6)
		} else {
			klog.InfoS("IPv6 is enabled but ip6tables is not usable; running single-stack IPv4: no IPv6 iptables rules, ipsets or IPVS virtual servers", "err", err)
		}
	}
	generation, closeGeneration := rulesGeneration(tables)
	defer closeGeneration()

	restCfg, err := o.RESTConfig()
	if err != nil {
		return err
	}
	client, err := servicecache.NewClientset(restCfg)
	if err != nil {
		return err
	}
	cache, err := servicecache.New(client, nodeName)
	if err != nil {
		return err
	}

	recorder := events.NewAPIRecorderForNode(ctx, client, nodeName)
	defer recorder.Shutdown()

	metrics.Register()
	go serveForever(ctx, "metrics", func(ctx context.Context) error {
		return metrics.Serve(ctx, o.MetricsBindAddress, metrics.NewHandler(metrics.HandlerOptions{EnableProfiling: o.EnableProfiling}))
	})
	health := healthcheck.NewProxyHealthServer(o.HealthzBindAddress, o.HealthTimeout(), cache.NodeObject)
	if o.HealthzBindAddress != "" {
		go serveForever(ctx, "healthz", health.Run)
	}
	if o.HealthzAPIServerTimeout > 0 {
		health.SetAPIServerTimeout(o.HealthzAPIServerTimeout)
		go healthcheck.ProbeAPIServer(ctx, client.Discovery().RESTClient(), apiProbePeriod(o.HealthzAPIServerTimeout), health)
	}

	// The schedulers the kernel can load, probed once per name. Should the
	// global one be missing (a node with an older kernel than the others),
	// the proxy says so and uses rr rather than failing every Service.
	schedulers := ipvs.NewSchedulers(kipvs.ProbeScheduler)
	scheduler := o.Scheduler()
	schedulers.Ensure(scheduler)
	if err := schedulers.Unavailable(scheduler); err != nil {
		klog.ErrorS(err, "The kernel cannot load the IPVS scheduler of --ipvs-scheduler; using the default instead", "scheduler", scheduler, "default", ipvs.DefaultScheduler)
		scheduler = ipvs.DefaultScheduler
	}

	// Every sync moves the health check node ports to the addresses
	// --nodeport-addresses resolves to (SetAddresses): the primary IPs come
	// from the Node object, which is only known once the caches sync, and
	// the host's addresses may change.
	svcHealth := healthcheck.NewServiceHealthServer(nodeName, nil, func() bool { return health.Health().Healthy })
	defer svcHealth.Close()
	applier := ipvs.NewApplierWithOptions(kipvs, ipvs.NewKernelLinks(ipvs.DummyLinkName), ipvs.ApplierOptions{
		GracefulTerminationTimeout: o.GracefulTerminationTimeout,
		Excluded:                   excluded,
		Progress:                   logProgress(health.Progress),
	})
	var r *runner.Runner // the proxier asks it for retries
	p := proxy.New(proxy.Config{
		Scheduler:              scheduler,
		Schedulers:             schedulers,
		Families:               families,
		ClusterCIDRs:           clusterCIDRs,
		MasqueradeAll:          o.MasqueradeAll,
		NodePortAddresses:      npa,
		ExcludeCIDRs:           excludeCIDRs,
		Guard:                  guardCfg,
		LocalFallbackToCluster: o.ExternalLocalFallback,
		NotLocal:               o.NotLocal,
	}, cache, proxy.LocalAddresses, applier, &iptables.Applier{IPSet: ipset, Tables: tables, Generation: generation}, health,
		proxy.Options{ServiceHealth: svcHealth, Conntrack: conntrack.New(), Events: recorder, Sysctls: ensureSysctls,
			Progress: health.Progress, RetryAt: func(at time.Time) { r.TriggerAt(at) }})
	go drain(ctx, applier)

	r = runner.New(p.Sync, runner.Options{MinInterval: o.EffectiveMinSyncPeriod(), SyncPeriod: o.IPVSSyncPeriod})
	cache.OnChange(func() {
		for _, f := range families {
			health.QueuedUpdate(familyOf(f))
			metrics.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(string(familyOf(f))).SetToCurrentTime()
		}
		r.Trigger()
	})
	// As upstream: the health server judges a family only after its first
	// Updated, so a first sync that hangs must still be reported.
	for _, f := range families {
		health.Updated(familyOf(f))
	}

	cache.Start(ctx)
	klog.InfoS("Waiting for the Service, EndpointSlice and Node caches to sync", "node", nodeName)
	if !cache.WaitForCacheSync(ctx) {
		return fmt.Errorf("informer caches did not sync: %w", context.Cause(ctx))
	}
	klog.InfoS("Caches synced; starting the sync loop", "node", nodeName, "families", fmt.Sprint(families),
		"scheduler", scheduler, "syncPeriod", o.IPVSSyncPeriod, "minSyncPeriod", o.EffectiveMinSyncPeriod())
	health.SyncLoopRunning()
	r.Loop(ctx)
	cache.Shutdown()
	klog.InfoS("Stopping; the kernel state stays in place")
	return nil
}

// apiProbePeriod checks the API server a few times per timeout, at most
// every 10 s.
func apiProbePeriod(timeout time.Duration) time.Duration {
	return min(timeout/4, 10*time.Second)
}

// drain deletes the real servers that finished draining (weight 0 with no
// connections left, or past --ipvs-graceful-termination-timeout), checking
// every second while any drains.
func drain(ctx context.Context, a *ipvs.Applier) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if a.Draining() == 0 {
				continue
			}
			if err := a.ProcessDraining(); err != nil {
				klog.ErrorS(err, "Deleting drained real servers; retrying in a second")
			}
		}
	}
}

// cleanup is --cleanup: it removes exactly this proxy's kernel state (our
// virtual servers, kube-ipvs0, the KUBE-* chains and ipsets of both
// families) and nothing another tool made.
func cleanup(o *Options) error {
	excludeCIDRs, err := o.ExcludeCIDRPrefixes()
	if err != nil {
		return err
	}
	var errs []error
	var k ipvs.IPVS
	kipvs, err := ipvs.NewKernelIPVS()
	switch {
	case err == nil:
		defer kipvs.Close()
		k = kipvs
	case errors.Is(err, ipvs.ErrIPVSUnavailable):
		klog.InfoS("No IPVS in this kernel: only the dummy link, chains and ipsets are cleaned up")
	default:
		errs = append(errs, err)
	}
	local, err := proxy.LocalAddresses()
	if err != nil {
		errs = append(errs, err)
	}
	if err := ipvs.Cleanup(k, ipvs.NewKernelLinks(ipvs.DummyLinkName), ipvs.CleanupOptions{
		Excluded:          func(a netip.Addr) bool { return ipvs.Excluded(ipvs.Config{ExcludeCIDRs: excludeCIDRs}, a) },
		NodePortAddresses: local,
	}); err != nil {
		errs = append(errs, err)
	}
	ipset, err := iptables.NewNetlinkIPSet()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer ipset.Close()
	tables := map[iptables.Family]iptables.Tables{}
	families := []iptables.Family{}
	for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
		if f == iptables.IPv6 && !ipv6Enabled() {
			continue
		}
		t, err := iptables.NewIptablesTables(f, iptables.BackendDefault)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tables[f] = t
		families = append(families, f)
	}
	if err := (&iptables.Applier{IPSet: ipset, Tables: tables}).Cleanup(families); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	klog.InfoS("Cleaned up: our virtual servers, kube-ipvs0, KUBE-* chains and ipsets are gone")
	return nil
}

func familyOf(f iptables.Family) v1.IPFamily {
	if f == iptables.IPv6 {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}

func ipv6Enabled() bool {
	_, err := os.Stat("/proc/net/if_inet6")
	return err == nil
}

// serveForever runs a server, restarting it after a failure (a port still
// in use by the previous instance right after a restart).
func serveForever(ctx context.Context, name string, serve func(context.Context) error) {
	for ctx.Err() == nil {
		err := serve(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		klog.ErrorS(err, "Server failed; restarting it", "server", name)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// rulesGeneration returns the nftables generation reader when every
// family's rules are iptables-nft's (a full resync then skips
// iptables-save while no rule changed), and nil otherwise.
func rulesGeneration(tables map[iptables.Family]iptables.Tables) (func() (uint32, error), func()) {
	for _, t := range tables {
		if it, ok := t.(*iptables.IptablesTables); !ok || !it.NFTables() {
			return nil, func() {}
		}
	}
	g, err := iptables.NewNFTGeneration()
	if err == nil {
		_, err = g.Get()
		if err != nil {
			g.Close()
		}
	}
	if err != nil {
		klog.InfoS("Listing the rules on every full resync: the nftables generation cannot be read", "err", err)
		return nil, func() {}
	}
	return g.Get, g.Close
}

// logProgress wraps the applier's progress report (every 1000 kernel
// changes): besides keeping /livez alive through a long first sync, it
// says how far the proxy got, at most once every 30 seconds.
func logProgress(progress func()) func() {
	var batches int
	var logged time.Time
	return func() {
		progress()
		batches++
		if time.Since(logged) >= 30*time.Second {
			logged = time.Now()
			klog.InfoS("Applying IPVS and address changes", "appliedSinceStart", batches*1000)
		}
	}
}
