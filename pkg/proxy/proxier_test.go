package proxy

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// snapshots hands out the next queued snapshot on each call.
type snapshots struct{ queue []*servicecache.Snapshot }

func (s *snapshots) Snapshot() *servicecache.Snapshot {
	if len(s.queue) == 0 {
		return nil
	}
	snap := s.queue[0]
	if len(s.queue) > 1 {
		s.queue = s.queue[1:]
	}
	return snap
}

type healthRecorder struct{ updated []v1.IPFamily }

func (h *healthRecorder) Updated(f v1.IPFamily) { h.updated = append(h.updated, f) }

var node = servicecache.Node{Name: "node1", Addresses: []netip.Addr{netip.MustParseAddr("172.30.0.11")}}

func web(endpoints ...string) *servicecache.Service {
	var eps []servicecache.Endpoint
	for _, e := range endpoints {
		eps = append(eps, servicecache.Endpoint{Addr: netip.MustParseAddr(e), Port: 8080, Ready: true, Serving: true})
	}
	return &servicecache.Service{
		Key: servicecache.ServiceKey{Namespace: "default", Name: "web"}, Type: v1.ServiceTypeNodePort,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:      []servicecache.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080, Endpoints: eps}},
	}
}

type fixture struct {
	p      *Proxier
	ipvs   *ipvs.FakeIPVS
	links  *ipvs.FakeLinks
	log    *ipvs.FakeLog
	ipset  *iptables.FakeIPSet
	health *healthRecorder
	snaps  *snapshots
}

func newFixture() *fixture {
	log := &ipvs.FakeLog{}
	f := &fixture{ipvs: ipvs.NewFakeIPVS(log), links: ipvs.NewFakeLinks(log), log: log,
		ipset: iptables.NewFakeIPSet(), health: &healthRecorder{}, snaps: &snapshots{}}
	local := func() ([]netip.Addr, error) { return node.Addresses, nil }
	f.p = New(Config{Families: []iptables.Family{iptables.IPv4}, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
		f.snaps, local, ipvs.NewApplier(f.ipvs, f.links),
		&iptables.Applier{IPSet: f.ipset, Tables: map[iptables.Family]iptables.Tables{iptables.IPv4: iptables.NewFakeTables()}}, f.health, Options{})
	return f
}

func (f *fixture) kernel(t *testing.T) string {
	t.Helper()
	st, err := ipvs.ReadKernel(f.ipvs, f.links)
	if err != nil {
		t.Fatal(err)
	}
	return st.Dump()
}

func TestSyncProgramsAndThenOnlyTouchesChangedServices(t *testing.T) {
	f := newFixture()
	svc := web("10.244.1.2", "10.244.2.2")
	other := &servicecache.Service{
		Key: servicecache.ServiceKey{Namespace: "default", Name: "other"}, Type: v1.ServiceTypeClusterIP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")},
		Ports:      []servicecache.ServicePort{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53}},
	}
	f.snaps.queue = []*servicecache.Snapshot{
		{Services: []*servicecache.Service{other, svc}, Node: node, Changed: []servicecache.ServiceKey{other.Key, svc.Key}},
	}
	if err := f.p.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	want := `addr 10.96.0.10/32
addr 10.96.0.20/32
-A -t 10.96.0.10:80 -s rr
-a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1
-a -t 10.96.0.10:80 -r 10.244.2.2:8080 -m -w 1
-A -u 10.96.0.20:53 -s rr
-A -t 172.30.0.11:30080 -s rr
-a -t 172.30.0.11:30080 -r 10.244.1.2:8080 -m -w 1
-a -t 172.30.0.11:30080 -r 10.244.2.2:8080 -m -w 1
`
	if got := f.kernel(t); got != want {
		t.Fatalf("kernel after the first sync:\n%s\nwant:\n%s", got, want)
	}
	if len(f.health.updated) != 1 {
		t.Fatalf("health updated %v times, want once", f.health.updated)
	}
	if !f.ipset.Has("KUBE-CLUSTER-IP") {
		t.Fatal("KUBE-CLUSTER-IP was not created")
	}

	// One endpoint goes away: an incremental sync touches only that.
	svc2 := web("10.244.1.2")
	f.snaps.queue = []*servicecache.Snapshot{
		{Services: []*servicecache.Service{other, svc2}, Node: node, Changed: []servicecache.ServiceKey{svc2.Key}},
	}
	f.log.Reset()
	if err := f.p.Sync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	ops := f.log.Lines()
	if len(ops) != 2 {
		t.Fatalf("incremental sync made %d kernel ops, want 2 (one per virtual server):\n%s", len(ops), strings.Join(ops, "\n"))
	}
	for _, op := range ops {
		if !strings.Contains(op, "-d") || !strings.Contains(op, "10.244.2.2:8080") {
			t.Fatalf("unexpected op %q", op)
		}
	}
}

// One Service the kernel refuses is that Service's failure: the sync
// succeeds (health stays good), the other Services are programmed, the
// Service gets one Warning Event and counts in the gauge, a retry is
// asked for, and the next full sync programs it once the kernel accepts.
func TestOneRefusedServiceDoesNotFailTheSync(t *testing.T) {
	f := newFixture()
	ev := &fakeEvents{}
	f.p.opts.Events = ev
	var retryAt []time.Time
	f.p.opts.RetryAt = func(at time.Time) { retryAt = append(retryAt, at) }
	svc := web("10.244.1.2")
	svc.UID = "uid-web"
	other := &servicecache.Service{
		Key: servicecache.ServiceKey{Namespace: "default", Name: "other"}, Type: v1.ServiceTypeClusterIP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")},
		Ports:      []servicecache.ServicePort{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, Endpoints: []servicecache.Endpoint{{Addr: netip.MustParseAddr("10.244.1.5"), Port: 53, Ready: true, Serving: true}}}},
	}
	snap := &servicecache.Snapshot{Services: []*servicecache.Service{other, svc}, Node: node, Changed: []servicecache.ServiceKey{other.Key, svc.Key}}
	f.snaps.queue = []*servicecache.Snapshot{snap}
	f.ipvs.FailOn("ipvsadm -A -t 10.96.0.10:80 -s rr", syscall.EINVAL)
	metrics.Register()
	if err := f.p.Sync(context.Background(), true); err != nil {
		t.Fatalf("Sync = %v, want the failure kept with the Service", err)
	}
	if len(f.health.updated) != 1 {
		t.Fatal("a sync with one refused Service must keep the proxy healthy")
	}
	if !strings.Contains(f.kernel(t), "-a -u 10.96.0.20:53 -r 10.244.1.5:53 -m -w 1") {
		t.Fatalf("the other Service was not programmed:\n%s", f.kernel(t))
	}
	if want := []string{"default/web uid-web " + ipvs.ReasonKernelRefused}; !slices.Equal(ev.got, want) {
		t.Errorf("Events %v, want %v", ev.got, want)
	}
	if n := gaugeValue(t, "kubeipvsproxy_services_failed"); n != 1 {
		t.Errorf("kubeipvsproxy_services_failed = %v, want 1", n)
	}
	if len(retryAt) == 0 {
		t.Error("no retry asked for")
	}
	// Still refused on the next syncs: no second Event.
	f.snaps.queue = []*servicecache.Snapshot{{Services: snap.Services, Node: node}}
	if err := f.p.Sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if len(ev.got) != 1 {
		t.Errorf("Events %v, want still one", ev.got)
	}
	f.ipvs.FailOn("ipvsadm -A -t 10.96.0.10:80 -s rr", nil)
	if err := f.p.Sync(context.Background(), true); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if !strings.Contains(f.kernel(t), "-a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1") {
		t.Fatalf("the retry did not program the ClusterIP:\n%s", f.kernel(t))
	}
	if n := gaugeValue(t, "kubeipvsproxy_services_failed"); n != 0 {
		t.Errorf("kubeipvsproxy_services_failed = %v after the retry, want 0", n)
	}
}

// A failure that is no Service's (the dummy link cannot be made) fails the
// sync: health then reflects it, and the next sync repairs.
func TestNodeFailureIsReturnedAndRepairedByTheNextSync(t *testing.T) {
	f := newFixture()
	svc := web("10.244.1.2")
	f.snaps.queue = []*servicecache.Snapshot{{Services: []*servicecache.Service{svc}, Node: node, Changed: []servicecache.ServiceKey{svc.Key}}}
	injected := errors.New("injected")
	f.links.FailOn(ipvs.FakeAddLinkCmd, injected)
	err := f.p.Sync(context.Background(), true)
	if !errors.Is(err, injected) {
		t.Fatalf("Sync returned %v, want the injected error", err)
	}
	if len(f.health.updated) != 0 {
		t.Fatal("a failed sync must not mark the proxy healthy")
	}
	f.links.FailOn(ipvs.FakeAddLinkCmd, nil)
	if err := f.p.Sync(context.Background(), true); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if !strings.Contains(f.kernel(t), "-a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1") {
		t.Fatalf("the retry did not program the ClusterIP:\n%s", f.kernel(t))
	}
}

// gaugeValue reads one unlabelled gauge from the legacy registry.
func gaugeValue(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

func TestSyncBeforeCacheSyncFails(t *testing.T) {
	f := newFixture()
	if err := f.p.Sync(context.Background(), true); err == nil {
		t.Fatal("Sync with no snapshot must fail")
	}
}
