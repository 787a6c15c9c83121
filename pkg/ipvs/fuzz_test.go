package ipvs

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/fuzzgen"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// FuzzIPVSPlan plans random Services and EndpointSlices (decoded by
// fuzzgen and converted by the service cache) and checks that the plan is
// valid (ValidateDesired), that PlanServices agrees with Plan, and that the
// applier programs it into the fakes, reads it back unchanged, has nothing
// left to do on a second pass, and gets there incrementally from an older
// plan too.
//
//	go test -run='^$' -fuzz=FuzzIPVSPlan -fuzztime=3m -parallel=1 ./pkg/ipvs/
func FuzzIPVSPlan(f *testing.F) {
	for _, seed := range fuzzgen.Seeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sc := fuzzgen.Generate(data)
		snap := sc.Snapshot()
		cfg := fuzzConfig(sc)

		d := Plan(snap, cfg)
		if err := ValidateDesired(d, snap, cfg); err != nil {
			t.Fatalf("invalid plan: %v\n%s", err, describePlan(d))
		}
		if again := describePlan(Plan(snap, cfg)); again != describePlan(d) {
			t.Fatalf("Plan is not deterministic:\n%s\nthen:\n%s", describePlan(d), again)
		}
		keys := fuzzgen.Keys(snap)
		all := PlanServices(snap, keys, cfg)
		if got, want := describePlan(all), describePlan(d); got != want {
			t.Fatalf("PlanServices(every key) differs from Plan:\n%s\nPlan:\n%s", got, want)
		}
		if err := checkPerService(d, snap, cfg); err != nil {
			t.Fatal(err)
		}

		checkApply(t, d, keys, all)
		checkIncremental(t, sc, cfg, snap, d)
	})
}

// fuzzConfig is the planner configuration of a scenario.
func fuzzConfig(sc *fuzzgen.Scenario) Config {
	return Config{
		Scheduler:              sc.Scheduler,
		NodePortAddresses:      sc.NodePortAddresses,
		LocalAddresses:         sc.LocalAddresses,
		ExcludeCIDRs:           sc.ExcludeCIDRs,
		LocalFallbackToCluster: sc.LocalFallback,
	}
}

// usable is what a planned address must be: valid, specified, without a
// zone, and not IPv4-mapped (the kernel would see another family).
func usable(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("invalid address")
	case a.IsUnspecified():
		return fmt.Errorf("unspecified address %s", a)
	case a.Zone() != "":
		return fmt.Errorf("address %s has a zone", a)
	case a.Is4In6():
		return fmt.Errorf("IPv4-mapped address %s", a)
	}
	return nil
}

// ValidateDesired checks a plan of snap with cfg: every virtual server has
// a usable address of one of its Service's families, a non-zero port, a
// known protocol, a valid scheduler with flags it has, persistence iff a
// timeout, and comes from the Service port and address its fields name;
// its real servers are sorted, unique, usable endpoints of that port, of
// the virtual server's family, with a non-zero port and weight 1 (Masq);
// excluded addresses are planned as any other; the addresses to bind are
// sorted, unique, and exactly those of the virtual servers to bind;
// ByService holds every virtual server once, under its Service.
func ValidateDesired(d *Desired, snap *servicecache.Snapshot, cfg Config) error {
	if d == nil || d.VirtualServers == nil || d.ByService == nil {
		return errors.New("nil plan, VirtualServers or ByService")
	}
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	local := map[netip.Addr]bool{}
	for _, a := range slices.Concat(normalizeAddrs(cfg.LocalAddresses), d.NodePortAddresses) {
		local[a] = true
	}
	if !strictlySorted(d.NodePortAddresses, netip.Addr.Compare) {
		fail("node port addresses not sorted and unique: %v", d.NodePortAddresses)
	}
	for _, a := range d.NodePortAddresses {
		if err := usable(a); err != nil {
			fail("node port address %s: %v", a, err)
		}
	}

	bind := map[netip.Addr]bool{}
	for key, vs := range d.VirtualServers {
		if vs == nil || vs.Key != key {
			fail("%s: nil or under another key", key)
			continue
		}
		if err := validateVS(vs, snap, d, local); err != nil {
			fail("%s: %v", vs, err)
		}
		if vs.Bind {
			bind[key.Addr] = true
		}
	}

	if !strictlySorted(d.Addresses, netip.Addr.Compare) {
		fail("addresses to bind not sorted and unique: %v", d.Addresses)
	}
	for _, a := range d.Addresses {
		if !bind[a] {
			fail("address %s is bound but no virtual server to bind is on it", a)
		}
		delete(bind, a)
	}
	for a := range bind {
		fail("address %s of a virtual server to bind is not bound", a)
	}

	n := 0
	for svc, vss := range d.ByService {
		if len(vss) == 0 {
			fail("ByService[%s] is empty", svc)
		}
		for _, vs := range vss {
			n++
			if vs == nil || d.VirtualServers[vs.Key] != vs || vs.Service != svc {
				fail("ByService[%s] holds %v, which is not the plan's virtual server of that Service", svc, vs)
			}
		}
	}
	if n != len(d.VirtualServers) {
		fail("ByService holds %d virtual servers, the plan %d", n, len(d.VirtualServers))
	}

	for _, p := range d.Problems {
		if snap.Service(p.Service) == nil || (p.Reason != ReasonInvalidScheduler && p.Reason != ReasonInvalidSchedulerFlags && p.Reason != ReasonAddressConflict && p.Reason != ReasonSchedulerUnavailable) || p.Message == "" {
			fail("problem %+v", p)
		}
	}
	return errors.Join(errs...)
}

// validateVS checks one planned virtual server (see ValidateDesired).
func validateVS(vs *VirtualServer, snap *servicecache.Snapshot, d *Desired, local map[netip.Addr]bool) error {
	k := vs.Key
	if vs.Kind == KindFWMark || k.FWMark != 0 {
		return validateFWMark(vs, snap)
	}
	if err := usable(k.Addr); err != nil {
		return err
	}
	if k.Port == 0 {
		return errors.New("port 0")
	}
	if k.Proto != ProtoTCP && k.Proto != ProtoUDP && k.Proto != ProtoSCTP {
		return fmt.Errorf("protocol %s", k.Proto)
	}
	if !ValidScheduler(vs.Scheduler) {
		return fmt.Errorf("scheduler %q", vs.Scheduler)
	}
	if extra := vs.Flags &^ (FlagPersistent | FlagSched1 | FlagSched2); extra != 0 {
		return fmt.Errorf("flags %#x", uint32(vs.Flags))
	}
	if vs.Flags&(FlagSched1|FlagSched2) != 0 && vs.Scheduler != "mh" && vs.Scheduler != "sh" {
		return fmt.Errorf("scheduler flags %#x with scheduler %s", uint32(vs.Flags), vs.Scheduler)
	}
	if (vs.Flags&FlagPersistent != 0) != (vs.Timeout > 0) {
		return fmt.Errorf("persistence flag and timeout %d disagree", vs.Timeout)
	}

	svc := snap.Service(vs.Service)
	if svc == nil {
		return fmt.Errorf("Service %s is not in the snapshot", vs.Service)
	}
	if !slices.ContainsFunc(svc.ClusterIPs, func(a netip.Addr) bool { return a.Is4() == k.Addr.Is4() }) {
		return errors.New("the Service has no cluster IP of this family")
	}
	if want := uint32(svc.AffinityTimeoutSeconds); svc.AffinityTimeoutSeconds > 0 && vs.Timeout != want {
		return fmt.Errorf("timeout %d, want the affinity timeout %d", vs.Timeout, want)
	}
	var addrs []netip.Addr
	switch vs.Kind {
	case KindClusterIP:
		addrs = svc.ClusterIPs
		if !vs.Bind {
			return errors.New("cluster IP not bound")
		}
	case KindExternalIP, KindLoadBalancer:
		addrs = svc.ExternalIPs
		if vs.Kind == KindLoadBalancer {
			addrs = svc.LoadBalancerIPs
		}
		if vs.Bind == local[k.Addr] {
			return fmt.Errorf("bind %v, local address %v", vs.Bind, local[k.Addr])
		}
	case KindNodePort:
		addrs = d.NodePortAddresses
		if vs.Bind {
			return errors.New("node port bound")
		}
	default:
		return fmt.Errorf("kind %s", vs.Kind)
	}
	if !slices.Contains(addrs, k.Addr) {
		return fmt.Errorf("address is not one of the Service's %s addresses %v", vs.Kind, addrs)
	}
	i := slices.IndexFunc(svc.Ports, func(p servicecache.ServicePort) bool {
		proto, ok := ProtoFromV1(p.Protocol)
		port := p.Port
		if vs.Kind == KindNodePort {
			port = p.NodePort
		}
		return ok && p.Name == vs.PortName && proto == k.Proto && port == k.Port
	})
	if i < 0 {
		return fmt.Errorf("no port %q of the Service has this protocol and port", vs.PortName)
	}
	sp := &svc.Ports[i]

	if !strictlySorted(vs.RealServers, compareRS) {
		return fmt.Errorf("real servers not sorted and unique: %v", vs.RealServers)
	}
	for _, rs := range vs.RealServers {
		if err := usable(rs.Key.Addr); err != nil {
			return fmt.Errorf("real server %s: %v", rs.Key, err)
		}
		if rs.Key.Addr.Is4() != k.Addr.Is4() {
			return fmt.Errorf("real server %s of the other family", rs.Key)
		}
		if rs.Key.Port == 0 || rs.Weight != 1 || rs.Forward != ForwardMasq {
			return fmt.Errorf("real server %s: port 0, weight %d or forward %d", rs.Key, rs.Weight, rs.Forward)
		}
		j := slices.IndexFunc(sp.Endpoints, func(ep servicecache.Endpoint) bool {
			return ep.Addr == rs.Key.Addr && ep.Port == rs.Key.Port
		})
		if j < 0 {
			return fmt.Errorf("real server %s is not an endpoint of port %q", rs.Key, sp.Name)
		}
		if ep := &sp.Endpoints[j]; !ep.Ready && !isServingTerminating(ep) {
			return fmt.Errorf("real server %s is neither ready nor serving and terminating", rs.Key)
		}
	}
	return nil
}

// checkPerService checks that each Service gets in Plan what it gets
// alone, less the virtual servers a Service before it already has (the
// first in snapshot order wins).
func checkPerService(d *Desired, snap *servicecache.Snapshot, cfg Config) error {
	claimed := map[VSKey]bool{}
	for _, svc := range snap.Services {
		var want []VSKey
		for _, vs := range PlanServices(snap, []servicecache.ServiceKey{svc.Key}, cfg).ByService[svc.Key] {
			if !claimed[vs.Key] {
				want = append(want, vs.Key)
				claimed[vs.Key] = true
			}
		}
		var got []VSKey
		for _, vs := range d.ByService[svc.Key] {
			got = append(got, vs.Key)
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s: Plan gives %v, alone it has %v of its own", svc.Key, got, want)
		}
	}
	return nil
}

// fuzzRig is an applier over fakes.
type fuzzRig struct {
	log   *FakeLog
	ipvs  *FakeIPVS
	links *FakeLinks
	a     *Applier
}

func newFuzzRig(opts ApplierOptions) *fuzzRig {
	r := &fuzzRig{log: &FakeLog{}}
	r.ipvs, r.links = NewFakeIPVS(r.log), NewFakeLinks(r.log)
	r.a = NewApplierWithOptions(r.ipvs, r.links, opts)
	return r
}

// matches checks that the kernel holds exactly want and that the applier
// knows it.
func (r *fuzzRig) matches(t *testing.T, when string, want *State) {
	t.Helper()
	k, err := ReadKernel(r.ipvs, r.links)
	if err != nil {
		t.Fatalf("%s: ReadKernel: %v", when, err)
	}
	if got := k.Dump(); got != want.Dump() {
		t.Fatalf("%s: the kernel holds\n%s\nwant\n%s", when, got, want.Dump())
	}
	if ops := Diff(k, want); len(ops) != 0 {
		t.Fatalf("%s: Diff(kernel, plan) = %v", when, ops)
	}
	if obs := r.a.Observed().Dump(); obs != k.Dump() {
		t.Fatalf("%s: the applier's memory\n%s\ndiffers from the kernel\n%s", when, obs, k.Dump())
	}
}

// idle checks that f changes nothing in the kernel.
func (r *fuzzRig) idle(t *testing.T, what string, f func() error) {
	t.Helper()
	r.log.Reset()
	if err := f(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if ops := r.log.Lines(); len(ops) != 0 {
		t.Fatalf("%s changed the kernel again:\n%s", what, strings.Join(ops, "\n"))
	}
}

// checkApply reconciles d into empty fakes and checks the result and that
// a second Reconcile and an ApplyServices of every Service do nothing.
func checkApply(t *testing.T, d *Desired, keys []servicecache.ServiceKey, all *Desired) {
	r := newFuzzRig(ApplierOptions{})
	if err := r.a.Reconcile(d); err != nil {
		t.Fatalf("Reconcile into empty fakes: %v\n%s", err, strings.Join(r.log.Lines(), "\n"))
	}
	r.matches(t, "after Reconcile", &d.State)
	r.idle(t, "a second Reconcile", func() error { return r.a.Reconcile(d) })
	r.idle(t, "ApplyServices(every Service)", func() error { return r.a.ApplyServices(keys, all) })
	r.matches(t, "after ApplyServices", &d.State)
}

// checkIncremental starts from the plan of an older snapshot (some Services
// missing, and those kept seeing only some slices), then applies the
// difference with ApplyServices, as a sync does, and checks that the
// kernel ends where a full Reconcile would put it.
func checkIncremental(t *testing.T, sc *fuzzgen.Scenario, cfg Config, snap *servicecache.Snapshot, d *Desired) {
	oldSvcs := sc.Services[:len(sc.Services)/2]
	oldSlices := sc.Slices[len(sc.Slices)/3:]
	old := sc.SnapshotOf(snap.Node, oldSvcs, oldSlices)

	// Every Service of either snapshot changed: conflicts resolve in
	// snapshot order, as in Plan.
	var allKeys []servicecache.ServiceKey
	for _, s := range [][]servicecache.ServiceKey{fuzzgen.Keys(old), fuzzgen.Keys(snap)} {
		allKeys = append(allKeys, s...)
	}
	slices.SortFunc(allKeys, servicecache.ServiceKey.Compare)
	allKeys = slices.Compact(allKeys)

	// Only the Services that differ changed, as the service cache reports
	// them: the result is Plan's when no two Services want the same
	// virtual server (otherwise the next Reconcile settles the conflict).
	var changed []servicecache.ServiceKey
	for _, k := range allKeys {
		if !old.Service(k).Equal(snap.Service(k)) {
			changed = append(changed, k)
		}
	}

	for _, tc := range []struct {
		name string
		keys []servicecache.ServiceKey
		ok   bool
	}{
		{"every Service", allKeys, true},
		{"changed Services", changed, !hasConflicts(old, cfg) && !hasConflicts(snap, cfg)},
	} {
		if !tc.ok {
			continue
		}
		// Graceful termination: the fakes' real servers have no connection,
		// so they are deleted at once all the same.
		r := newFuzzRig(ApplierOptions{GracefulTerminationTimeout: time.Minute})
		if err := r.a.Reconcile(Plan(old, cfg)); err != nil {
			t.Fatalf("%s: Reconcile of the old plan: %v", tc.name, err)
		}
		if err := r.a.ApplyServices(tc.keys, PlanServices(snap, tc.keys, cfg)); err != nil {
			t.Fatalf("%s: ApplyServices(%v): %v", tc.name, tc.keys, err)
		}
		r.matches(t, tc.name+": after ApplyServices", &d.State)
		if known := r.a.Known(); known != nil || (d.Conflicts == 0 && !hasConflicts(old, cfg)) {
			// Without conflicts, what the applier holds is the plan.
			want := *d
			want.Problems, want.Conflicts = nil, 0
			if known == nil {
				t.Fatalf("%s: Known() is nil without conflicts", tc.name)
			}
			if got := describePlan(known); got != describePlan(&want) {
				t.Fatalf("%s: Known() after ApplyServices:\n%s\nPlan:\n%s", tc.name, got, describePlan(&want))
			}
		}
		if n := r.a.Draining(); n != 0 {
			t.Fatalf("%s: %d real servers draining without connections", tc.name, n)
		}
		r.idle(t, tc.name+": Reconcile after ApplyServices", func() error { return r.a.Reconcile(d) })
	}
}

// hasConflicts reports whether two Services of snap want the same virtual
// server.
func hasConflicts(snap *servicecache.Snapshot, cfg Config) bool {
	owner := map[VSKey]servicecache.ServiceKey{}
	for _, svc := range snap.Services {
		for _, vs := range PlanService(svc, &snap.Node, cfg) {
			if o, ok := owner[vs.Key]; ok && o != svc.Key {
				return true
			}
			owner[vs.Key] = svc.Key
		}
	}
	return false
}

// TestValidateDesiredCatches makes sure ValidateDesired is not vacuous: it
// rejects plans broken in the ways it looks for.
func TestValidateDesiredCatches(t *testing.T) {
	snap := snapshot(svc("ns", "a", ips("10.96.0.1"), port("http", "TCP", 80, 0, ep("10.244.0.1", 8080, "ready"))))
	cfg := Config{}
	breakers := map[string]func(d *Desired){
		"port 0":            func(d *Desired) { d.ByService[key("ns", "a")][0].Key.Port = 0 },
		"unknown scheduler": func(d *Desired) { d.ByService[key("ns", "a")][0].Scheduler = "xx" },
		"IPv6 real server":  func(d *Desired) { d.ByService[key("ns", "a")][0].RealServers[0].Key.Addr = ip("fd00::1") },
		"negative weight":   func(d *Desired) { d.ByService[key("ns", "a")][0].RealServers[0].Weight = -1 },
		"duplicate real": func(d *Desired) {
			vs := d.ByService[key("ns", "a")][0]
			vs.RealServers = append(vs.RealServers, vs.RealServers[0])
		},
		"stray address":      func(d *Desired) { d.Addresses = append(d.Addresses, ip("10.96.0.9")) },
		"unbound address":    func(d *Desired) { d.Addresses = nil },
		"missing ByService":  func(d *Desired) { delete(d.ByService, key("ns", "a")) },
		"unspecified VIP":    func(d *Desired) { d.ByService[key("ns", "a")][0].Key.Addr = netip.IPv4Unspecified() },
		"persistent forever": func(d *Desired) { d.ByService[key("ns", "a")][0].Flags |= FlagPersistent },
	}
	for _, name := range slices.Sorted(maps.Keys(breakers)) {
		d := Plan(snap, cfg)
		if err := ValidateDesired(d, snap, cfg); err != nil {
			t.Fatalf("valid plan rejected: %v", err)
		}
		breakers[name](d)
		if err := ValidateDesired(d, snap, cfg); err == nil {
			t.Errorf("%s: not caught", name)
		}
	}
}

// validateFWMark checks one planned firewall-mark virtual server: on the
// mark of a port of an externalTrafficPolicy: Local Service, matching
// external virtual servers of that port and family, balancing to endpoints
// of that family.
func validateFWMark(vs *VirtualServer, snap *servicecache.Snapshot) error {
	k := vs.Key
	if vs.Kind != KindFWMark || vs.Bind || !OwnedMark(k.FWMark) || k.Port != 0 || k.Proto != 0 || !k.Addr.IsUnspecified() {
		return fmt.Errorf("firewall-mark virtual server kind %s bind %v", vs.Kind, vs.Bind)
	}
	svc := snap.Service(vs.Service)
	if svc == nil || !svc.ExternalPolicyLocal {
		return fmt.Errorf("Service %s is not an externalTrafficPolicy: Local one of the snapshot", vs.Service)
	}
	if !slices.ContainsFunc(svc.Ports, func(p servicecache.ServicePort) bool { return p.Name == vs.PortName }) {
		return fmt.Errorf("port %q is not the Service's", vs.PortName)
	}
	if len(vs.Match) == 0 || len(vs.RealServers) == 0 {
		return errors.New("matches nothing or balances to nothing")
	}
	for _, m := range vs.Match {
		if m.FWMark != 0 || m.Addr.Is4() != k.Addr.Is4() {
			return fmt.Errorf("matches %s", m)
		}
	}
	for _, rs := range vs.RealServers {
		if err := usable(rs.Key.Addr); err != nil || rs.Key.Addr.Is4() != k.Addr.Is4() {
			return fmt.Errorf("real server %s: %v", rs.Key, err)
		}
	}
	return nil
}
