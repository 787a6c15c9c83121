package ipvs

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

var errBoom = errors.New("boom")

// rig is an applier over fakes sharing one log.
type rig struct {
	log   *FakeLog
	ipvs  *FakeIPVS
	links *FakeLinks
	a     *Applier
	cfg   Config
	// clock is the applier's: failed ops wait for their backoff to pass.
	clock time.Time
}

func newRig(cfg Config) *rig {
	log := &FakeLog{}
	r := &rig{log: log, ipvs: NewFakeIPVS(log), links: NewFakeLinks(log), cfg: cfg, clock: time.Unix(1_000_000, 0)}
	r.a = NewApplierWithOptions(r.ipvs, r.links, ApplierOptions{Now: func() time.Time { return r.clock }})
	return r
}

// pastBackoff moves the clock past every failed op's retry time.
func (r *rig) pastBackoff() { r.clock = r.clock.Add(maxRetry) }

func (r *rig) kernel(t *testing.T) *State {
	t.Helper()
	st, err := ReadKernel(r.ipvs, r.links)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (r *rig) reconcile(t *testing.T, snap *servicecache.Snapshot) *Desired {
	t.Helper()
	d := Plan(snap, r.cfg)
	if err := r.a.Reconcile(d); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	return d
}

func (r *rig) apply(t *testing.T, snap *servicecache.Snapshot, changed ...servicecache.ServiceKey) {
	t.Helper()
	if err := r.a.ApplyServices(changed, PlanServices(snap, changed, r.cfg)); err != nil {
		t.Fatalf("ApplyServices: %v", err)
	}
}

// checkKernel compares the owned part of the kernel (everything but the
// foreign servers) with want, and the applier's memory with the kernel.
func (r *rig) checkKernel(t *testing.T, want *State, foreign ...VSKey) {
	t.Helper()
	k := r.kernel(t)
	for _, f := range foreign {
		delete(k.VirtualServers, f)
	}
	if got := k.Dump(); got != want.Dump() {
		t.Errorf("kernel:\n%s\nwant:\n%s", got, want.Dump())
	}
	if obs := r.a.Observed().Dump(); obs != k.Dump() {
		t.Errorf("applier memory:\n%s\ndiffers from the kernel:\n%s", obs, k.Dump())
	}
}

// checkOrder checks that nothing is added after something is deleted and
// that every bound address is added before the servers on it.
func checkOrder(t *testing.T, log []string) {
	t.Helper()
	deleting := false
	added := map[string]bool{}
	for _, l := range log {
		isDelete := strings.HasPrefix(l, "ipvsadm -d") || strings.HasPrefix(l, "ipvsadm -D") || strings.HasPrefix(l, "ip addr del")
		if isDelete {
			deleting = true
		} else if deleting {
			t.Errorf("%q comes after a delete:\n%s", l, strings.Join(log, "\n"))
		}
		if a, ok := strings.CutPrefix(l, "ip addr add "); ok {
			added[strings.Split(a, "/")[0]] = true
		}
		if rest, ok := strings.CutPrefix(l, "ipvsadm -A -t "); ok {
			addr := netip.MustParseAddrPort(strings.Fields(rest)[0]).Addr().String()
			if strings.HasPrefix(addr, "10.96.") && !added[addr] {
				t.Errorf("%q before its address is bound:\n%s", l, strings.Join(log, "\n"))
			}
		}
	}
}

func webSnap(eps ...servicecache.Endpoint) *servicecache.Snapshot {
	return snapshot(svc("default", "web", ips("10.96.0.20"), port("http", v1.ProtocolTCP, 80, 30080, eps...)))
}

func TestApplierReconcileFromScratch(t *testing.T) {
	r := newRig(Config{NodePortAddresses: ips("192.168.1.10")})
	d := r.reconcile(t, webSnap(ep("10.244.1.3", 8080, "ready"), ep("10.244.1.2", 8080, "ready")))
	want := []string{
		"ip link add kube-ipvs0 type dummy",
		"ip addr add 10.96.0.20/32 dev kube-ipvs0",
		"ipvsadm -A -t 10.96.0.20:80 -s rr",
		"ipvsadm -A -t 192.168.1.10:30080 -s rr",
		"ipvsadm -a -t 10.96.0.20:80 -r 10.244.1.2:8080 -m -w 1",
		"ipvsadm -a -t 10.96.0.20:80 -r 10.244.1.3:8080 -m -w 1",
		"ipvsadm -a -t 192.168.1.10:30080 -r 10.244.1.2:8080 -m -w 1",
		"ipvsadm -a -t 192.168.1.10:30080 -r 10.244.1.3:8080 -m -w 1",
	}
	if got := r.log.Lines(); !slices.Equal(got, want) {
		t.Errorf("ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	r.checkKernel(t, &d.State)

	// Nothing to do the second time.
	r.log.Reset()
	r.reconcile(t, webSnap(ep("10.244.1.3", 8080, "ready"), ep("10.244.1.2", 8080, "ready")))
	if got := r.log.Lines(); len(got) != 0 {
		t.Errorf("second reconcile did:\n%s", strings.Join(got, "\n"))
	}
	// The memory carries the plan's annotations once in sync.
	if vs := r.a.Observed().VirtualServers[d.ByService[key("default", "web")][0].Key]; vs.Service != key("default", "web") {
		t.Errorf("observed server lost its service: %+v", vs)
	}
}

func TestApplierOrdering(t *testing.T) {
	r := newRig(Config{})
	r.reconcile(t, snapshot(
		svc("default", "a", ips("10.96.0.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.1", 80, "ready"))),
		svc("default", "b", ips("10.96.0.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"), ep("10.244.1.3", 80, "ready"))),
	))
	checkOrder(t, r.log.Lines())

	r.log.Reset()
	snap := snapshot(
		svc("default", "b", ips("10.96.0.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.3", 80, "ready"), ep("10.244.1.4", 80, "ready"))),
		svc("default", "c", ips("10.96.0.3"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.5", 80, "ready"))),
	)
	d := r.reconcile(t, snap)
	want := []string{
		"ip addr add 10.96.0.3/32 dev kube-ipvs0",
		"ipvsadm -A -t 10.96.0.3:80 -s rr",
		"ipvsadm -a -t 10.96.0.2:80 -r 10.244.1.4:80 -m -w 1",
		"ipvsadm -a -t 10.96.0.3:80 -r 10.244.1.5:80 -m -w 1",
		"ipvsadm -d -t 10.96.0.2:80 -r 10.244.1.2:80",
		"ipvsadm -D -t 10.96.0.1:80",
		"ip addr del 10.96.0.1/32 dev kube-ipvs0",
	}
	if got := r.log.Lines(); !slices.Equal(got, want) {
		t.Errorf("ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	checkOrder(t, r.log.Lines())
	r.checkKernel(t, &d.State)
}

func TestApplierLeavesForeignServersAlone(t *testing.T) {
	r := newRig(Config{NodePortAddresses: ips("192.168.1.10")})
	foreign := []*VirtualServer{
		vs("192.168.50.1:80/TCP", "10.1.0.1:80"), // e.g. keepalived
		with(vs("10.0.0.5:443/UDP", "10.1.0.2:443"), func(v *VirtualServer) { v.Scheduler = "wlc" }),
	}
	for _, f := range foreign {
		r.ipvs.Put(f)
	}
	// Left over from an earlier run: bound address with its server, a
	// NodePort server, and an outdated server the plan still wants.
	r.links.SetAddresses(ip("10.96.0.99"), ip("10.96.0.20"))
	r.ipvs.Put(vs("10.96.0.99:80/TCP", "10.244.9.9:80"))
	r.ipvs.Put(vs("192.168.1.10:31000/TCP", "10.244.9.9:80"))
	r.ipvs.Put(with(vs("10.96.0.20:80/TCP", "10.244.9.9:8080"), func(v *VirtualServer) { v.Scheduler = "lc" }))

	d := r.reconcile(t, webSnap(ep("10.244.1.2", 8080, "ready")))
	for _, l := range r.log.Lines() {
		if strings.Contains(l, "192.168.50.1") || strings.Contains(l, "10.0.0.5") {
			t.Errorf("foreign server touched: %s", l)
		}
	}
	r.checkKernel(t, &d.State, foreign[0].Key, foreign[1].Key)
	k := r.kernel(t)
	for _, f := range foreign {
		got := (&State{VirtualServers: map[VSKey]*VirtualServer{f.Key: k.VirtualServers[f.Key]}}).Dump()
		want := (&State{VirtualServers: map[VSKey]*VirtualServer{f.Key: f}}).Dump()
		if got != want {
			t.Errorf("foreign server changed:\n%s\nwant:\n%s", got, want)
		}
	}
	checkOrder(t, r.log.Lines())
	// Nothing foreign in memory either.
	if n := len(r.a.Observed().VirtualServers); n != len(d.VirtualServers) {
		t.Errorf("applier remembers %d servers, want %d", n, len(d.VirtualServers))
	}
}

func TestApplierErrorsDoNotStopOtherOps(t *testing.T) {
	r := newRig(Config{})
	snap := snapshot(
		svc("default", "a", ips("10.96.0.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.1", 80, "ready"))),
		svc("default", "b", ips("10.96.0.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"), ep("10.244.1.3", 80, "ready"))),
		svc("default", "c", ips("10.96.0.3"), port("dns", v1.ProtocolUDP, 53, 0, ep("10.244.1.4", 53, "ready"))),
	)
	r.ipvs.FailOn("ipvsadm -A -t 10.96.0.1:80 -s rr", errBoom)
	r.ipvs.FailOn("ipvsadm -a -t 10.96.0.2:80 -r 10.244.1.2:80 -m -w 1", errBoom)
	r.links.FailOn("ip addr add 10.96.0.3/32 dev kube-ipvs0", errBoom)

	d := Plan(snap, r.cfg)
	// Each failure is its Service's, not the node's: the sync succeeds.
	if err := r.a.Reconcile(d); err != nil {
		t.Fatalf("Reconcile error = %v, want the failures kept per Service", err)
	}
	wantFailures := []ServiceFailure{
		{Service: key("default", "a"), Reason: ReasonKernelRefused, Message: "ipvsadm -A -t 10.96.0.1:80 -s rr (service default/a:http): boom"},
		{Service: key("default", "b"), Reason: ReasonKernelRefused, Message: "ipvsadm -a -t 10.96.0.2:80 -r 10.244.1.2:80 -m -w 1 (service default/b:http): boom"},
		{Service: key("default", "c"), Reason: ReasonKernelRefused, Message: "ip addr add 10.96.0.3/32 dev kube-ipvs0: boom"},
	}
	if got := r.a.Failures(); !slices.Equal(got, wantFailures) {
		t.Errorf("Failures:\n%v\nwant:\n%v", got, wantFailures)
	}
	log := strings.Join(r.log.Lines(), "\n")
	if strings.Contains(log, "-a -t 10.96.0.1:80") {
		t.Errorf("destinations of a server that failed to be added were tried:\n%s", log)
	}
	// The other ops went through, the server on the unbound address too.
	want := `addr 10.96.0.1/32
addr 10.96.0.2/32
-A -t 10.96.0.2:80 -s rr
-a -t 10.96.0.2:80 -r 10.244.1.3:80 -m -w 1
-A -u 10.96.0.3:53 -s rr
-a -u 10.96.0.3:53 -r 10.244.1.4:53 -m -w 1
`
	if got := r.kernel(t).Dump(); got != want {
		t.Errorf("kernel:\n%s\nwant:\n%s", got, want)
	}
	if obs := r.a.Observed().Dump(); obs != want {
		t.Errorf("applier memory:\n%s\nwant:\n%s", obs, want)
	}

	// Once the kernel recovers, an incremental apply retries just the
	// failures, after their backoff.
	r.ipvs.FailOn("ipvsadm -A -t 10.96.0.1:80 -s rr", nil)
	r.ipvs.FailOn("ipvsadm -a -t 10.96.0.2:80 -r 10.244.1.2:80 -m -w 1", nil)
	r.links.FailOn("ip addr add 10.96.0.3/32 dev kube-ipvs0", nil)
	r.log.Reset()
	if err := r.a.ApplyServices(nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := r.log.Lines(); len(got) > 0 {
		t.Errorf("retried before the backoff passed:\n%s", strings.Join(got, "\n"))
	}
	if next := r.a.NextRetry(); !next.Equal(r.clock.Add(minRetry)) {
		t.Errorf("NextRetry = %v, want %v", next, r.clock.Add(minRetry))
	}
	r.pastBackoff()
	if err := r.a.ApplyServices(nil, nil); err != nil {
		t.Fatal(err)
	}
	wantOps := []string{
		"ip addr add 10.96.0.3/32 dev kube-ipvs0",
		"ipvsadm -A -t 10.96.0.1:80 -s rr",
		"ipvsadm -a -t 10.96.0.1:80 -r 10.244.1.1:80 -m -w 1",
		"ipvsadm -a -t 10.96.0.2:80 -r 10.244.1.2:80 -m -w 1",
	}
	if got := r.log.Lines(); !slices.Equal(got, wantOps) {
		t.Errorf("retry ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantOps, "\n"))
	}
	r.checkKernel(t, &d.State)
	if got := r.a.Failures(); len(got) > 0 || !r.a.NextRetry().IsZero() {
		t.Errorf("after the retry: Failures %v, NextRetry %v", got, r.a.NextRetry())
	}
}

// TestApplierPartialServerFailure checks the memory after some ops of one
// server fail and others succeed.
func TestApplierPartialServerFailure(t *testing.T) {
	r := newRig(Config{})
	r.reconcile(t, webSnap(ep("10.244.1.1", 80, "ready"), ep("10.244.1.2", 80, "ready")))

	next := snapshot(func() *servicecache.Service {
		s := svc("default", "web", ips("10.96.0.20"), port("http", v1.ProtocolTCP, 80, 30080, ep("10.244.1.2", 80, "ready"), ep("10.244.1.3", 80, "ready")))
		s.AffinityTimeoutSeconds = 60
		return s
	}())
	r.ipvs.FailOn("ipvsadm -d -t 10.96.0.20:80 -r 10.244.1.1:80", errBoom)
	r.ipvs.FailOn("ipvsadm -E -t 10.96.0.20:80 -s rr -p 60", errBoom)
	err := r.a.ApplyServices([]servicecache.ServiceKey{key("default", "web")}, PlanServices(next, []servicecache.ServiceKey{key("default", "web")}, r.cfg))
	if err != nil {
		t.Fatalf("error = %v, want the failures kept for the Service", err)
	}
	if f := r.a.Failures(); len(f) != 1 || f[0].Service != key("default", "web") {
		t.Errorf("Failures = %v, want default/web's virtual server", f)
	}
	want := `addr 10.96.0.20/32
-A -t 10.96.0.20:80 -s rr
-a -t 10.96.0.20:80 -r 10.244.1.1:80 -m -w 1
-a -t 10.96.0.20:80 -r 10.244.1.2:80 -m -w 1
-a -t 10.96.0.20:80 -r 10.244.1.3:80 -m -w 1
`
	if obs := r.a.Observed().Dump(); obs != want {
		t.Errorf("applier memory:\n%s\nwant:\n%s", obs, want)
	}
	if k := r.kernel(t).Dump(); k != want {
		t.Errorf("kernel:\n%s\nwant:\n%s", k, want)
	}

	r.ipvs.FailOn("ipvsadm -d -t 10.96.0.20:80 -r 10.244.1.1:80", nil)
	r.ipvs.FailOn("ipvsadm -E -t 10.96.0.20:80 -s rr -p 60", nil)
	r.pastBackoff()
	if err := r.a.ApplyServices(nil, nil); err != nil {
		t.Fatal(err)
	}
	r.checkKernel(t, &Plan(next, r.cfg).State)
}

func TestApplierIncremental(t *testing.T) {
	r := newRig(Config{NodePortAddresses: ips("192.168.1.10")})
	mk := func(name, vip string, p uint16, ext []netip.Addr, eps ...servicecache.Endpoint) *servicecache.Service {
		s := svc("default", name, ips(vip), port("http", v1.ProtocolTCP, p, 0, eps...))
		s.ExternalIPs = ext
		return s
	}
	shared := ips("203.0.113.5")
	a1 := mk("a", "10.96.0.1", 80, nil, ep("10.244.1.1", 80, "ready"), ep("10.244.1.2", 80, "ready"))
	b := mk("b", "10.96.0.2", 80, shared, ep("10.244.2.1", 80, "ready"))
	c := mk("c", "10.96.0.3", 81, shared, ep("10.244.3.1", 80, "ready"))
	r.reconcile(t, snapshot(a1, b, c))

	// a changes endpoints, b goes away, d appears; c is untouched and still
	// needs the shared external IP.
	a2 := mk("a", "10.96.0.1", 80, nil, ep("10.244.1.2", 80, "ready"), ep("10.244.1.3", 80, "ready"))
	d := mk("d", "10.96.0.4", 80, nil, ep("10.244.4.1", 80, "ready"))
	snap2 := snapshot(a2, c, d)
	r.log.Reset()
	r.apply(t, snap2, key("default", "a"), key("default", "b"), key("default", "d"))
	want := []string{
		"ip addr add 10.96.0.4/32 dev kube-ipvs0",
		"ipvsadm -A -t 10.96.0.4:80 -s rr",
		"ipvsadm -a -t 10.96.0.1:80 -r 10.244.1.3:80 -m -w 1",
		"ipvsadm -a -t 10.96.0.4:80 -r 10.244.4.1:80 -m -w 1",
		"ipvsadm -d -t 10.96.0.1:80 -r 10.244.1.1:80",
		"ipvsadm -D -t 10.96.0.2:80",
		"ipvsadm -D -t 203.0.113.5:80",
		"ip addr del 10.96.0.2/32 dev kube-ipvs0",
	}
	if got := r.log.Lines(); !slices.Equal(got, want) {
		t.Errorf("ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	r.checkKernel(t, &Plan(snap2, r.cfg).State)

	// Without c, the shared address goes too.
	snap3 := snapshot(a2, d)
	r.log.Reset()
	r.apply(t, snap3, key("default", "c"))
	want = []string{
		"ipvsadm -D -t 10.96.0.3:81",
		"ipvsadm -D -t 203.0.113.5:81",
		"ip addr del 10.96.0.3/32 dev kube-ipvs0",
		"ip addr del 203.0.113.5/32 dev kube-ipvs0",
	}
	if got := r.log.Lines(); !slices.Equal(got, want) {
		t.Errorf("ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A full reconcile finds nothing left to do.
	r.log.Reset()
	r.reconcile(t, snap3)
	if got := r.log.Lines(); len(got) != 0 {
		t.Errorf("reconcile after incremental applies did:\n%s", strings.Join(got, "\n"))
	}
}

func TestApplierIncrementalConflict(t *testing.T) {
	r := newRig(Config{})
	y := svc("default", "y", ips("10.96.0.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.2.1", 80, "ready")))
	y.ExternalIPs = ips("203.0.113.5")
	y.Created = time.Unix(1000, 0)
	r.reconcile(t, snapshot(y))

	// x, created later, claims y's external IP and port: y, older, keeps
	// it, though x comes first by name.
	x := svc("default", "x", ips("10.96.0.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.1", 80, "ready")))
	x.ExternalIPs = ips("203.0.113.5")
	x.Created = time.Unix(2000, 0)
	r.log.Reset()
	r.apply(t, snapshot(x, y), key("default", "x"))
	for _, l := range r.log.Lines() {
		if strings.Contains(l, "203.0.113.5") {
			t.Errorf("claimed server touched: %s", l)
		}
	}
	if rs := r.kernel(t).VirtualServers[VSKey{Addr: ip("203.0.113.5"), Port: 80, Proto: ProtoTCP}].RealServers; len(rs) != 1 || rs[0].Key.Addr != ip("10.244.2.1") {
		t.Errorf("external IP now balances to %v", rs)
	}
}

func TestApplierRepairsOutsideChanges(t *testing.T) {
	r := newRig(Config{})
	d := r.reconcile(t, webSnap(ep("10.244.1.1", 80, "ready")))
	// Someone deletes our server and our address behind our back.
	if err := r.ipvs.DeleteService(VSKey{Addr: ip("10.96.0.20"), Port: 80, Proto: ProtoTCP}); err != nil {
		t.Fatal(err)
	}
	if err := r.links.DeleteAddress(ip("10.96.0.20")); err != nil {
		t.Fatal(err)
	}
	r.reconcile(t, webSnap(ep("10.244.1.1", 80, "ready")))
	r.checkKernel(t, &d.State)
}

func TestApplierReadFailures(t *testing.T) {
	r := newRig(Config{})
	if err := r.a.ApplyServices(nil, nil); !errors.Is(err, ErrNotReconciled) {
		t.Errorf("ApplyServices before Reconcile: %v", err)
	}
	r.links.FailOn(FakeAddLinkCmd, errBoom)
	if err := r.a.Reconcile(Plan(webSnap(), r.cfg)); !errors.Is(err, errBoom) {
		t.Errorf("Reconcile without a link: %v", err)
	}
	r.links.FailOn(FakeAddLinkCmd, nil)
	r.ipvs.FailOn(FakeListServicesCmd, errBoom)
	if err := r.a.Reconcile(Plan(webSnap(), r.cfg)); !errors.Is(err, errBoom) {
		t.Errorf("Reconcile with a failing dump: %v", err)
	}
	want := []string{FakeAddLinkCmd + " # failed: boom", FakeAddLinkCmd}
	if got := r.log.Lines(); !slices.Equal(got, want) {
		t.Errorf("ops after failed reads: %q, want %q", got, want)
	}
	if err := r.a.ApplyServices(nil, nil); !errors.Is(err, ErrNotReconciled) {
		t.Errorf("ApplyServices after failed Reconciles: %v", err)
	}
	// A nil plan removes everything owned.
	r.ipvs.FailOn(FakeListServicesCmd, nil)
	r.links.SetAddresses(ip("10.96.0.1"))
	r.ipvs.Put(vs("10.96.0.1:80/TCP"))
	if err := r.a.Reconcile(nil); err != nil {
		t.Fatal(err)
	}
	r.checkKernel(t, state(nil))
}

// TestApplyDesiredWithoutByService covers a Desired built by hand.
func TestApplyDesiredWithoutByService(t *testing.T) {
	r := newRig(Config{})
	v := vs("10.96.0.20:80/TCP", "10.244.1.1:80")
	v.Service = key("default", "web")
	d := &Desired{State: *state([]string{"10.96.0.20"}, v)}
	if err := r.a.Reconcile(d); err != nil {
		t.Fatal(err)
	}
	r.checkKernel(t, &d.State)
	// Nil entries are ignored rather than crashing the sync loop.
	d.VirtualServers[VSKey{Addr: ip("10.96.0.30"), Port: 80, Proto: ProtoTCP}] = nil
	if err := r.a.Reconcile(d); err != nil {
		t.Fatal(err)
	}
	if err := r.a.ApplyServices([]servicecache.ServiceKey{key("default", "web")}, &Desired{}); err != nil {
		t.Fatal(err)
	}
	r.checkKernel(t, state(nil))
}

// A virtual server kube-proxy left on another local address (it serves
// NodePorts on every local address, pod gateways included) with a port in
// the NodePort range is a stale NodePort server and goes; one on a local
// address outside that range, or on a foreign address, stays.
func TestApplierRemovesNodePortServersOnOtherLocalAddresses(t *testing.T) {
	r := newRig(Config{NodePortAddresses: ips("192.168.1.10"), LocalAddresses: ips("192.168.1.10", "10.244.1.1")})
	stale := vs("10.244.1.1:30080/TCP", "10.244.1.2:8080")
	keep := []*VirtualServer{vs("10.244.1.1:8443/TCP", "10.1.0.1:443"), vs("192.168.50.1:30080/TCP", "10.1.0.1:80")}
	r.ipvs.Put(stale)
	for _, k := range keep {
		r.ipvs.Put(k)
	}
	d := r.reconcile(t, webSnap(ep("10.244.1.2", 8080, "ready")))
	k := r.kernel(t)
	if k.VirtualServers[stale.Key] != nil {
		t.Errorf("the NodePort server on another local address is still there")
	}
	for _, v := range keep {
		if k.VirtualServers[v.Key] == nil {
			t.Errorf("%s was removed", v.Key)
		}
	}
	r.checkKernel(t, &d.State, keep[0].Key, keep[1].Key)
}

// NodePorts are served on every host address, and other tools put
// virtual servers on host addresses too: one outside the NodePort range on
// an address that also serves NodePorts is not ours and stays.
func TestApplierLeavesForeignServersOnNodePortAddresses(t *testing.T) {
	r := newRig(Config{NodePortAddresses: ips("192.168.1.10", "192.0.2.60"), LocalAddresses: ips("192.168.1.10", "192.0.2.60")})
	foreign := []*VirtualServer{vs("192.0.2.60:80/TCP", "10.1.0.1:80"), vs("192.168.1.10:443/UDP", "10.1.0.2:443")}
	for _, f := range foreign {
		r.ipvs.Put(f)
	}
	stale := vs("192.0.2.60:31000/TCP", "10.244.9.9:80")
	r.ipvs.Put(stale)
	snap := snapshot(svc("default", "web", ips("10.96.0.10"), port("http", v1.ProtocolTCP, 80, 30080, ep("10.244.1.2", 8080, "ready"))))
	d := r.reconcile(t, snap)
	k := r.kernel(t)
	if k.VirtualServers[stale.Key] != nil {
		t.Errorf("the stale NodePort server %s is still there", stale.Key)
	}
	for _, f := range foreign {
		if k.VirtualServers[f.Key] == nil {
			t.Errorf("the foreign server %s was removed", f.Key)
		}
	}
	if d.VirtualServers[VSKey{Addr: ip("192.0.2.60"), Port: 30080, Proto: ProtoTCP}] == nil {
		t.Fatalf("no NodePort server planned on 192.0.2.60:\n%s", d.Dump())
	}
	r.checkKernel(t, &d.State, foreign[0].Key, foreign[1].Key)
}

// The kernel's service dump can miss a server when another namespace's
// servers change during it. A Service deleted on such a read must not leave
// its server behind with its address unbound (no longer recognisable as
// ours): the applier confirms with a second read before unbinding, whether
// it knew the server (a running proxy) or not (after a restart).
func TestApplierConfirmsAServerMissingFromTheDump(t *testing.T) {
	key := VSKey{Addr: ip("10.96.0.20"), Port: 80, Proto: ProtoTCP}
	for _, restart := range []bool{false, true} {
		name := "known server"
		if restart {
			name = "after a restart"
		}
		t.Run(name, func(t *testing.T) {
			r := newRig(Config{})
			r.reconcile(t, webSnap(ep("10.244.1.1", 80, "ready")))
			if restart {
				r.a = NewApplier(r.ipvs, r.links)
			}
			before, _ := r.ipvs.Dumps()
			r.ipvs.HideOnNextList(key)
			r.reconcile(t, snapshot())
			if after, _ := r.ipvs.Dumps(); after-before != 2 {
				t.Errorf("%d service dumps, want 2 (the read and its confirmation)", after-before)
			}
			r.checkKernel(t, state(nil))
		})
	}
	// Nothing missing and nothing to unbind: one read.
	r := newRig(Config{})
	r.reconcile(t, webSnap(ep("10.244.1.1", 80, "ready")))
	before, _ := r.ipvs.Dumps()
	r.reconcile(t, webSnap(ep("10.244.1.1", 80, "ready")))
	if after, _ := r.ipvs.Dumps(); after-before != 1 {
		t.Errorf("a steady resync made %d service dumps, want 1", after-before)
	}
}
