package proxy

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
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
