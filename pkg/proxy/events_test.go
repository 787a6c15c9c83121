package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

type fakeEvents struct{ got []string }

func (f *fakeEvents) ServiceWarning(svc servicecache.ServiceKey, uid types.UID, reason, message string) {
	f.got = append(f.got, fmt.Sprintf("%s %s %s", svc, uid, reason))
}

// A planner problem (an unknown scheduler in the annotation) becomes one
// Warning Event on the Service: not again on later syncs, full or not,
// while it lasts; again after it was fixed and came back.
func TestProblemsAreRecordedOnceAsEvents(t *testing.T) {
	f := newFixture()
	ev := &fakeEvents{}
	f.p.opts.Events = ev
	withSched := func(s string) *servicecache.Service {
		svc := web("10.244.1.2")
		svc.UID = "uid-1"
		if s != "" {
			svc.Annotations = map[string]string{ipvs.AnnotationScheduler: s}
		}
		return svc
	}
	want := "default/web uid-1 " + ipvs.ReasonInvalidScheduler
	steps := []struct {
		name  string
		sched string
		full  bool
		want  []string // all Events so far
	}{
		{"unknown scheduler, full sync", "fast", true, []string{want}},
		{"same, incremental sync", "fast", false, []string{want}},
		{"same, full sync", "fast", true, []string{want}},
		{"fixed", "lc", false, []string{want}},
		{"broken again", "fast", false, []string{want, want}},
		{"removed, full sync", "", true, []string{want, want}},
		{"broken again after a full sync", "fast", true, []string{want, want, want}},
	}
	for _, st := range steps {
		svc := withSched(st.sched)
		f.snaps.queue = []*servicecache.Snapshot{{Services: []*servicecache.Service{svc}, Node: node, Changed: []servicecache.ServiceKey{svc.Key}}}
		if err := f.p.Sync(context.Background(), st.full); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if !slices.Equal(ev.got, st.want) {
			t.Fatalf("%s: events %q, want %q", st.name, ev.got, st.want)
		}
	}
}

// The sysctls are put back on full syncs only.
func TestSysctlsOnFullSyncs(t *testing.T) {
	f := newFixture()
	calls := 0
	f.p.opts.Sysctls = func() error { calls++; return nil }
	svc := web("10.244.1.2")
	for _, full := range []bool{true, false, false, true} {
		f.snaps.queue = []*servicecache.Snapshot{{Services: []*servicecache.Service{svc}, Node: node, Changed: []servicecache.ServiceKey{svc.Key}}}
		if err := f.p.Sync(context.Background(), full); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 2 {
		t.Fatalf("sysctls ensured %d times over two full and two incremental syncs, want 2", calls)
	}
}

// A periodic resync that finds a virtual server deleted behind the proxy's
// back puts it back and counts it as drift; one after a real change does
// not count.
func TestDriftIsCounted(t *testing.T) {
	f := newFixture()
	svc := web("10.244.1.2")
	metrics.Register()
	drift := func() float64 {
		mfs, err := legacyregistry.DefaultGatherer.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "kubeipvsproxy_drift_repaired_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "subsystem" && lp.GetValue() == metrics.SubsystemIPVS {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return 0
	}
	sync := func(changed bool) {
		t.Helper()
		snap := &servicecache.Snapshot{Services: []*servicecache.Service{svc}, Node: node}
		if changed {
			snap.Changed = []servicecache.ServiceKey{svc.Key}
		}
		f.snaps.queue = []*servicecache.Snapshot{snap}
		if err := f.p.Sync(context.Background(), true); err != nil {
			t.Fatal(err)
		}
	}
	sync(true)
	before := drift()
	sync(false)
	if got := drift() - before; got != 0 {
		t.Fatalf("a resync with nothing changed counted %v drift", got)
	}
	key := ipvs.VSKey{Proto: ipvs.ProtoTCP, Addr: netip.MustParseAddr("10.96.0.10"), Port: 80}
	if err := f.ipvs.DeleteService(key); err != nil {
		t.Fatal(err)
	}
	sync(false)
	if got := drift() - before; got != 2 { // the virtual server and its real server
		t.Fatalf("repairing a deleted virtual server counted %v drift, want 2", got)
	}
}
