package servicecache

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2/ktesting"
)

const waitFor = 10 * time.Second

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type harness struct {
	t      *testing.T
	ctx    context.Context
	client *fake.Clientset
	c      *Cache
	// changed accumulates Snapshot.Changed across polls.
	changed map[ServiceKey]bool
}

func newHarness(t *testing.T, objs ...runtime.Object) *harness {
	t.Helper()
	client := fake.NewClientset(objs...)
	// V(4) so the skip and drop logging paths run; output goes to t.Log.
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(4)))
	c, err := New(client, "n1", WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		c.Shutdown()
	})
	c.Start(ctx)
	wctx, wcancel := context.WithTimeout(ctx, waitFor)
	defer wcancel()
	if !c.WaitForCacheSync(wctx) || !c.HasSynced() {
		t.Fatal("cache did not sync")
	}
	return &harness{t: t, ctx: ctx, client: client, c: c, changed: map[ServiceKey]bool{}}
}

// snapshot takes a Snapshot and records its Changed keys.
func (h *harness) snapshot() *Snapshot {
	s := h.c.Snapshot()
	if s == nil {
		h.t.Fatal("nil snapshot after sync")
	}
	for _, k := range s.Changed {
		h.changed[k] = true
	}
	if !slices.IsSortedFunc(s.Changed, ServiceKey.Compare) ||
		!slices.IsSortedFunc(s.Services, func(a, b *Service) int { return a.Key.Compare(b.Key) }) {
		h.t.Errorf("snapshot not sorted:\n%s", s)
	}
	return s
}

// until takes snapshots until cond holds and returns the last one.
func (h *harness) until(what string, cond func(*Snapshot) bool) *Snapshot {
	h.t.Helper()
	var s *Snapshot
	eventually(h.t, what, func() bool { s = h.snapshot(); return cond(s) })
	return s
}

// untilDump waits for the snapshot's services and node to print as want.
func (h *harness) untilDump(want string) *Snapshot {
	h.t.Helper()
	want = trim(dedent(want))
	deadline := time.Now().Add(waitFor)
	for {
		s := h.snapshot()
		cp := *s
		cp.Changed = nil
		got := trim(cp.String())
		if got == want {
			return s
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out; last snapshot:\n%s\nwant:\n%s", got, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// takeChanged returns and resets the accumulated Changed keys, sorted.
func (h *harness) takeChanged() []string {
	var out []string
	for k := range h.changed {
		out = append(out, k.String())
	}
	slices.Sort(out)
	h.changed = map[ServiceKey]bool{}
	return out
}

// waitDirty waits until the event handlers have marked key dirty, so that
// the next Snapshot is known to reconsider it.
func (h *harness) waitDirty(key ServiceKey) {
	h.t.Helper()
	eventually(h.t, "dirty "+key.String(), func() bool {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		_, ok := h.c.dirty[key]
		return ok
	})
}

func (h *harness) createService(s *v1.Service) {
	h.t.Helper()
	if _, err := h.client.CoreV1().Services(s.Namespace).Create(h.ctx, s, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) updateService(s *v1.Service) {
	h.t.Helper()
	if _, err := h.client.CoreV1().Services(s.Namespace).Update(h.ctx, s, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) deleteService(ns, name string) {
	h.t.Helper()
	if err := h.client.CoreV1().Services(ns).Delete(h.ctx, name, metav1.DeleteOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) createSlice(s *discovery.EndpointSlice) {
	h.t.Helper()
	if _, err := h.client.DiscoveryV1().EndpointSlices(s.Namespace).Create(h.ctx, s, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) updateSlice(s *discovery.EndpointSlice) {
	h.t.Helper()
	if _, err := h.client.DiscoveryV1().EndpointSlices(s.Namespace).Update(h.ctx, s, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) deleteSlice(ns, name string) {
	h.t.Helper()
	if err := h.client.DiscoveryV1().EndpointSlices(ns).Delete(h.ctx, name, metav1.DeleteOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func trim(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == ' ') {
		s = s[:len(s)-1]
	}
	return s
}

func nodeObj(name string) *v1.Node {
	return &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{v1.LabelTopologyZone: "z1"}},
		Spec:       v1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "192.168.0.10"},
			{Type: v1.NodeExternalIP, Address: "1.2.3.4"},
		}},
	}
}

var http8080 = []discovery.EndpointPort{eport("http", 8080)}

func TestNewErrors(t *testing.T) {
	if _, err := New(nil, "n1"); err == nil {
		t.Error("nil client accepted")
	}
	if _, err := New(fake.NewClientset(), ""); err == nil {
		t.Error("empty node name accepted")
	}
}

func TestNoSnapshotBeforeSync(t *testing.T) {
	c, err := New(fake.NewClientset(svcObj("ns", "a")), "n1")
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Snapshot(); s != nil {
		t.Errorf("snapshot before Start: %s", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if c.WaitForCacheSync(ctx) {
		t.Error("WaitForCacheSync true without Start")
	}
	// A Start whose context is already over never syncs.
	c.Start(ctx)
	if c.WaitForCacheSync(context.Background()) {
		t.Error("WaitForCacheSync true after a cancelled Start")
	}
	c.Shutdown()
	if c.Snapshot() != nil {
		t.Error("snapshot without sync")
	}
}

func TestCacheInitialSnapshot(t *testing.T) {
	other := nodeObj("n2")
	other.Labels[v1.LabelTopologyZone] = "z2"
	h := newHarness(t,
		nodeObj("n1"), other,
		svcObj("ns", "b"),
		svcObj("ns", "a", withClusterIPs("10.0.0.2")),
		svcObj("ns", "headless", withClusterIPs("None")),
		svcObj("ns", "other-proxy", func(s *v1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "x"} }),
		sliceObj("ns", "a-1", "a", http8080, epObj("10.1.0.1")),
		sliceObj("ns", "b-1", "b", http8080, epObj("10.1.0.2"), epObj("fd00::2")),
		sliceObj("ns", "orphan", "", http8080, epObj("10.1.0.9")),
	)
	s := h.snapshot()
	checkText(t, s.String(), `
		node n1 zone=z1 addrs=192.168.0.10,1.2.3.4 podCIDRs=10.244.1.0/24
		service ns/a ClusterIP ips=10.0.0.2
		  port "http"/TCP 80
		    10.1.0.1:8080 ready,serving
		service ns/b ClusterIP ips=10.0.0.1
		  port "http"/TCP 80
		    10.1.0.2:8080 ready,serving
		changed ns/a ns/b`)

	// Nothing happened since: same services, nothing changed.
	s2 := h.snapshot()
	if len(s2.Changed) != 0 || s2.Services[0] != s.Services[0] || s2.Services[1] != s.Services[1] {
		t.Errorf("second snapshot changed: %s", s2)
	}
	if got := s.Service(ServiceKey{"ns", "b"}); got != s.Services[1] {
		t.Errorf("Service lookup: %v", got)
	}
	if got := s.Service(ServiceKey{"ns", "headless"}); got != nil {
		t.Errorf("headless service present")
	}
}

func TestCacheOutOfOrderSlices(t *testing.T) {
	h := newHarness(t, nodeObj("n1"))
	key := ServiceKey{"ns", "a"}

	// Slice before its Service: nothing to show yet.
	h.createSlice(sliceObj("ns", "a-1", "a", http8080, epObj("10.1.0.1")))
	h.waitDirty(key)
	if s := h.snapshot(); len(s.Services) != 0 || len(s.Changed) != 0 {
		t.Fatalf("service from a lone slice: %s", s)
	}

	// The Service arrives and picks the slice up.
	h.createService(svcObj("ns", "a"))
	h.untilDump(`
		node n1 zone=z1 addrs=192.168.0.10,1.2.3.4 podCIDRs=10.244.1.0/24
		service ns/a ClusterIP ips=10.0.0.1
		  port "http"/TCP 80
		    10.1.0.1:8080 ready,serving`)
	if got := h.takeChanged(); !slices.Equal(got, []string{"ns/a"}) {
		t.Errorf("changed %v", got)
	}

	// A second slice for the same service, with an overlapping endpoint.
	h.createSlice(sliceObj("ns", "a-2", "a", http8080, epObj("10.1.0.1", conds(no, no, yes)), epObj("10.1.0.2")))
	h.untilDump(`
		node n1 zone=z1 addrs=192.168.0.10,1.2.3.4 podCIDRs=10.244.1.0/24
		service ns/a ClusterIP ips=10.0.0.1
		  port "http"/TCP 80
		    10.1.0.1:8080 ready,serving
		    10.1.0.2:8080 ready,serving`)

	// Service deleted first, then its slices.
	h.deleteService("ns", "a")
	h.until("service gone", func(s *Snapshot) bool { return len(s.Services) == 0 })
	if got := h.takeChanged(); !slices.Equal(got, []string{"ns/a"}) {
		t.Errorf("changed %v", got)
	}
	h.deleteSlice("ns", "a-1")
	h.waitDirty(key)
	h.deleteSlice("ns", "a-2")
	eventually(t, "slices gone", func() bool { return len(h.c.slices.List()) == 0 })
	h.waitDirty(key)
	if s := h.snapshot(); len(s.Services) != 0 || len(s.Changed) != 0 {
		t.Errorf("slice deletion after service deletion: %s", s)
	}
	h.c.mu.Lock()
	owners := len(h.c.sliceOwner)
	h.c.mu.Unlock()
	if owners != 0 {
		t.Errorf("sliceOwner leaks %d entries", owners)
	}
}

func TestCacheSliceMovesBetweenServices(t *testing.T) {
	h := newHarness(t, nodeObj("n1"),
		svcObj("ns", "a"), svcObj("ns", "b", withClusterIPs("10.0.0.2")),
		sliceObj("ns", "s", "a", http8080, epObj("10.1.0.1")))
	h.untilDump(`
		node n1 zone=z1 addrs=192.168.0.10,1.2.3.4 podCIDRs=10.244.1.0/24
		service ns/a ClusterIP ips=10.0.0.1
		  port "http"/TCP 80
		    10.1.0.1:8080 ready,serving
		service ns/b ClusterIP ips=10.0.0.2
		  port "http"/TCP 80`)
	h.takeChanged()

	h.updateSlice(sliceObj("ns", "s", "b", http8080, epObj("10.1.0.1")))
	h.untilDump(`
		node n1 zone=z1 addrs=192.168.0.10,1.2.3.4 podCIDRs=10.244.1.0/24
		service ns/a ClusterIP ips=10.0.0.1
		  port "http"/TCP 80
		service ns/b ClusterIP ips=10.0.0.2
		  port "http"/TCP 80
		    10.1.0.1:8080 ready,serving`)
	if got := h.takeChanged(); !slices.Equal(got, []string{"ns/a", "ns/b"}) {
		t.Errorf("changed %v", got)
	}

	// Losing the label detaches the slice from b.
	h.updateSlice(sliceObj("ns", "s", "", http8080, epObj("10.1.0.1")))
	h.until("b empty", func(s *Snapshot) bool {
		b := s.Service(ServiceKey{"ns", "b"})
		return b != nil && len(b.Ports[0].Endpoints) == 0
	})
	if got := h.takeChanged(); !slices.Equal(got, []string{"ns/b"}) {
		t.Errorf("changed %v", got)
	}
}

func TestCacheChangedSemantics(t *testing.T) {
	h := newHarness(t, nodeObj("n1"), svcObj("ns", "a"), svcObj("ns", "b", withClusterIPs("10.0.0.2")),
		sliceObj("ns", "a-1", "a", http8080, epObj("10.1.0.1")))
	base := h.snapshot()
	h.takeChanged()
	keyA := ServiceKey{"ns", "a"}
	oldA := base.Service(keyA)

	// An update of fields we do not read: resourceVersion bump and a foreign
	// annotation. The event is seen but the service is not changed.
	svc, err := h.client.CoreV1().Services("ns").Get(h.ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations = map[string]string{"example.com/unread": "1"}
	svc.Labels = map[string]string{"app": "x"}
	h.updateService(svc)
	h.waitDirty(keyA)
	s := h.snapshot()
	if len(s.Changed) != 0 || s.Service(keyA) != oldA {
		t.Errorf("irrelevant update marked changed: %v", s.Changed)
	}
	if &s.Services[0] != &base.Services[0] {
		t.Errorf("Services slice rebuilt without change")
	}

	// Same for a slice update that changes nothing we read.
	sl := sliceObj("ns", "a-1", "a", http8080, epObj("10.1.0.1", func(e *discovery.Endpoint) {
		e.TargetRef = &v1.ObjectReference{Kind: "Pod", Name: "p"}
	}))
	sl.Labels["extra"] = "y"
	h.updateSlice(sl)
	h.waitDirty(keyA)
	if s := h.snapshot(); len(s.Changed) != 0 {
		t.Errorf("irrelevant slice update marked changed: %v", s.Changed)
	}

	// A relevant annotation does change it; b keeps its pointer.
	svc.Annotations[AnnotationPrefix+"scheduler"] = "sh"
	h.updateService(svc)
	s = h.until("annotation", func(s *Snapshot) bool { return s.Service(keyA).Annotations != nil })
	if got := h.takeChanged(); !slices.Equal(got, []string{"ns/a"}) {
		t.Errorf("changed %v", got)
	}
	if s.Service(ServiceKey{"ns", "b"}) != base.Service(ServiceKey{"ns", "b"}) {
		t.Errorf("unchanged service b was rebuilt")
	}
	if oldA.Annotations != nil {
		t.Errorf("previous snapshot's service was mutated")
	}

	// A Service turning headless disappears and counts as changed.
	svc, err = h.client.CoreV1().Services("ns").Get(h.ctx, "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Labels = map[string]string{LabelServiceProxyName: "other"}
	h.updateService(svc)
	h.until("b skipped", func(s *Snapshot) bool { return s.Service(ServiceKey{"ns", "b"}) == nil })
	if got := h.takeChanged(); !slices.Equal(got, []string{"ns/b"}) {
		t.Errorf("changed %v", got)
	}
}

func TestCacheNodeAndNotifications(t *testing.T) {
	var calls atomic.Int32
	client := fake.NewClientset(nodeObj("n1"))
	c, err := New(client, "n1")
	if err != nil {
		t.Fatal(err)
	}
	c.OnChange(func() { calls.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); c.Shutdown() })
	c.Start(ctx)
	if !c.WaitForCacheSync(ctx) {
		t.Fatal("no sync")
	}
	// One notification right after sync, on both hooks.
	eventually(t, "post-sync callback", func() bool { return calls.Load() >= 1 })
	select {
	case <-c.Changes():
	case <-time.After(waitFor):
		t.Fatal("no post-sync notification on Changes()")
	}
	h := &harness{t: t, ctx: ctx, client: client, c: c, changed: map[ServiceKey]bool{}}

	before := calls.Load()
	h.createService(svcObj("ns", "a"))
	eventually(t, "callback after add", func() bool { return calls.Load() > before })
	select {
	case <-c.Changes():
	case <-time.After(waitFor):
		t.Fatal("no notification on Changes()")
	}

	n := nodeObj("n1")
	n.Labels[v1.LabelTopologyZone] = "z9"
	n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, "fd00:244:1::/64")
	if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.until("node update", func(s *Snapshot) bool { return s.Node.Zone == "z9" })
	s := h.snapshot()
	checkText(t, s.Node.String(), "node n1 zone=z9 addrs=192.168.0.10,1.2.3.4 podCIDRs=10.244.1.0/24,fd00:244:1::/64")

	if err := client.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.until("node deleted", func(s *Snapshot) bool { return s.Node.Equal(Node{Name: "n1"}) })
}

func TestCacheTombstones(t *testing.T) {
	h := newHarness(t, nodeObj("n1"), svcObj("ns", "a"),
		sliceObj("ns", "a-1", "a", http8080, epObj("10.1.0.1")))
	h.snapshot()
	key := ServiceKey{"ns", "a"}
	take := func() map[ServiceKey]struct{} {
		h.c.mu.Lock()
		defer h.c.mu.Unlock()
		d := h.c.dirty
		h.c.dirty = map[ServiceKey]struct{}{}
		return d
	}
	take()

	// A tombstone without its object still dirties the slice's Service.
	h.c.onSlice(cache.DeletedFinalStateUnknown{Key: "ns/a-1"}, true)
	if d := take(); len(d) != 1 || !hasKey(d, key) {
		t.Errorf("dirty after bare slice tombstone: %v", d)
	}
	// An unknown slice tombstone with its object uses the label.
	h.c.onSlice(cache.DeletedFinalStateUnknown{Key: "ns/x", Obj: sliceObj("ns", "x", "c", nil)}, true)
	if d := take(); !hasKey(d, ServiceKey{"ns", "c"}) {
		t.Errorf("dirty after slice tombstone: %v", d)
	}
	h.c.onService(cache.DeletedFinalStateUnknown{Key: "ns/a", Obj: svcObj("ns", "a")})
	if d := take(); !hasKey(d, key) {
		t.Errorf("dirty after service tombstone: %v", d)
	}
	// Garbage is rejected without a panic.
	h.c.onService("junk")
	h.c.onSlice(42, true)
	h.c.onNode(struct{}{}, false)
	h.c.onService(cache.DeletedFinalStateUnknown{Key: "a/b/c"})
	if d := take(); len(d) != 0 {
		t.Errorf("garbage marked dirty: %v", d)
	}
	// Another node's events are ignored.
	h.c.onNode(cache.DeletedFinalStateUnknown{Key: "n2"}, true)
	h.c.onNode(nodeObj("n2"), false)
	if s := h.snapshot(); s.Node.Zone != "z1" {
		t.Errorf("other node applied: %v", s.Node)
	}
	h.c.onNode(cache.DeletedFinalStateUnknown{Key: "n1"}, true)
	if s := h.snapshot(); !s.Node.Equal(Node{Name: "n1"}) {
		t.Errorf("node tombstone not applied: %v", s.Node)
	}
}

func TestStripManagedFields(t *testing.T) {
	s := svcObj("ns", "a")
	s.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	h := newHarness(t, s)
	got, err := h.c.svcLister.Services("ns").Get("a")
	if err != nil {
		t.Fatal(err)
	}
	if got.ManagedFields != nil {
		t.Errorf("managedFields kept in the cache")
	}
	if o, err := stripManagedFields("not an object"); o != "not an object" || err != nil {
		t.Errorf("non-object: %v %v", o, err)
	}
}

func hasKey(m map[ServiceKey]struct{}, k ServiceKey) bool {
	_, ok := m[k]
	return ok
}
