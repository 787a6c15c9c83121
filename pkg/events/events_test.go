package events

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2/ktesting"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// warning is one ServiceWarning call.
type warning struct {
	svc     servicecache.ServiceKey
	uid     types.UID
	reason  string
	message string
}

var (
	web  = servicecache.ServiceKey{Namespace: "default", Name: "web"}
	warn = warning{web, "uid-1", "InvalidScheduler", `unknown scheduler "fast"`}
)

func testOptions() options {
	return options{
		queueSize:    8,
		callTimeout:  time.Second,
		maxTries:     3,
		backoff:      time.Millisecond,
		maxBackoff:   4 * time.Millisecond,
		flushTimeout: 5 * time.Second,
	}
}

func startRecorder(t *testing.T, client *fake.Clientset, node string, o options) *APIRecorder {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	return newRecorder(ctx, client.EventsV1(), node, o)
}

// runProxy is one lifetime of a proxy on node: it reports ws and stops,
// flushing. It returns the API calls made on events.
func runProxy(t *testing.T, client *fake.Clientset, node string, ws ...warning) []k8stesting.Action {
	t.Helper()
	client.ClearActions()
	r := startRecorder(t, client, node, testOptions())
	for _, w := range ws {
		r.ServiceWarning(w.svc, w.uid, w.reason, w.message)
	}
	r.Shutdown()
	return eventCalls(client)
}

func eventCalls(client *fake.Clientset) []k8stesting.Action {
	var out []k8stesting.Action
	for _, a := range client.Actions() {
		if a.GetResource().Resource == "events" {
			out = append(out, a)
		}
	}
	return out
}

func verbs(as []k8stesting.Action) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.GetVerb())
	}
	return out
}

func storedEvents(t *testing.T, client *fake.Clientset) []eventsv1.Event {
	t.Helper()
	list, err := client.EventsV1().Events("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(list.Items, func(a, b eventsv1.Event) int { return strings.Compare(a.Name, b.Name) })
	return list.Items
}

// The same problem twice in one process is one create, and the Event says
// what the proxy on which node found about which Service.
func TestSameProblemTwiceIsOneEvent(t *testing.T) {
	client := fake.NewClientset()
	calls := runProxy(t, client, "n1", warn, warn)
	if got := verbs(calls); !slices.Equal(got, []string{"create"}) {
		t.Fatalf("calls %q, want one create", got)
	}
	if n := len(storedEvents(t, client)); n != 1 {
		t.Fatalf("%d Events stored, want 1", n)
	}
	ev := *calls[0].(k8stesting.CreateAction).GetObject().(*eventsv1.Event)
	want := eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: EventName(web, "uid-1", warn.reason, "n1"), Namespace: "default"},
		EventTime:           ev.EventTime,
		ReportingController: "kube-ipvs-proxy",
		ReportingInstance:   "kube-ipvs-proxy-n1",
		Action:              ActionProgramming,
		Reason:              warn.reason,
		Regarding:           v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: "default", Name: "web", UID: "uid-1"},
		Note:                warn.message,
		Type:                v1.EventTypeWarning,
	}
	if ev.EventTime.IsZero() {
		t.Error("eventTime not set")
	}
	if fmt.Sprintf("%+v", ev) != fmt.Sprintf("%+v", want) {
		t.Errorf("stored Event\n%+v\nwant\n%+v", ev, want)
	}
	if !strings.HasPrefix(ev.Name, "web.") {
		t.Errorf("name %q does not start with the Service's name", ev.Name)
	}
}

// A restarted proxy reporting the same problem adds no Event: it bumps
// the series once, however often it reports it.
func TestRestartBumpsTheSeriesOnce(t *testing.T) {
	client := fake.NewClientset()
	runProxy(t, client, "n1", warn)
	for run, wantCount := range []int32{2, 3} {
		calls := runProxy(t, client, "n1", warn, warn, warn)
		if got := verbs(calls); !slices.Equal(got, []string{"create", "patch", "patch"}) {
			t.Fatalf("restart %d: calls %q, want a create refused, then the read and the bump", run+1, got)
		}
		if p := string(calls[1].(k8stesting.PatchAction).GetPatch()); p != "{}" {
			t.Errorf("restart %d: reading patch %s changes something", run+1, p)
		}
		bump := calls[2].(k8stesting.PatchAction)
		if bump.GetPatchType() != types.StrategicMergePatchType || !strings.Contains(string(bump.GetPatch()), `"series"`) {
			t.Errorf("restart %d: bump is %s %s", run+1, bump.GetPatchType(), bump.GetPatch())
		}
		evs := storedEvents(t, client)
		if len(evs) != 1 {
			t.Fatalf("restart %d: %d Events stored, want 1", run+1, len(evs))
		}
		s := evs[0].Series
		if s == nil || s.Count != wantCount || s.LastObservedTime.IsZero() {
			t.Fatalf("restart %d: series %+v, want count %d", run+1, s, wantCount)
		}
	}
}

// Series are per node and per reason (and per Service).
func TestSeriesPerNodeReasonAndService(t *testing.T) {
	client := fake.NewClientset()
	other := warn
	other.reason = "InvalidPersistenceTimeout"
	api := warn
	api.svc = servicecache.ServiceKey{Namespace: "default", Name: "api"}
	runProxy(t, client, "n1", warn, other, api)
	runProxy(t, client, "n2", warn, other, api)
	evs := storedEvents(t, client)
	if len(evs) != 6 {
		t.Fatalf("%d Events stored, want 6", len(evs))
	}
	for _, ev := range evs {
		if ev.Series != nil {
			t.Errorf("Event %s is a series: another node or reason bumped it", ev.Name)
		}
	}
	// A recreated Service (new UID) is another Service.
	recreated := warn
	recreated.uid = "uid-2"
	if calls := runProxy(t, client, "n1", recreated); !slices.Equal(verbs(calls), []string{"create"}) {
		t.Errorf("recreated Service: calls %q, want one create", verbs(calls))
	}
}

// A series that vanishes between the refused create and the bump (it
// expired) is created again.
func TestSeriesGoneBeforeBumpIsCreated(t *testing.T) {
	client := fake.NewClientset()
	var refused atomic.Bool
	client.PrependReactor("create", "events", func(k8stesting.Action) (bool, runtime.Object, error) {
		if refused.CompareAndSwap(false, true) {
			return true, nil, apierrors.NewAlreadyExists(schema.GroupResource{Group: "events.k8s.io", Resource: "events"}, "x")
		}
		return false, nil, nil
	})
	calls := runProxy(t, client, "n1", warn)
	if got := verbs(calls); !slices.Equal(got, []string{"create", "patch", "create"}) {
		t.Fatalf("calls %q, want create refused, read not found, create", got)
	}
	if n := len(storedEvents(t, client)); n != 1 {
		t.Fatalf("%d Events stored, want 1", n)
	}
}

// Server errors are retried a bounded number of times; refusals are not.
// Either way the Event is given up and can be reported again.
func TestAPIErrors(t *testing.T) {
	gr := schema.GroupResource{Group: "events.k8s.io", Resource: "events"}
	for _, tc := range []struct {
		name      string
		err       error
		failures  int // then success
		wantTries int
		wantEvent bool
	}{
		{"unavailable", apierrors.NewServiceUnavailable("down"), 100, 3, false},
		{"transport", fmt.Errorf("connection refused"), 100, 3, false},
		{"forbidden", apierrors.NewForbidden(gr, "x", fmt.Errorf("no")), 100, 1, false},
		{"invalid", apierrors.NewBadRequest("bad"), 100, 1, false},
		{"transient", apierrors.NewTooManyRequests("slow down", 1), 2, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := fake.NewClientset()
			var tries atomic.Int32
			client.PrependReactor("create", "events", func(k8stesting.Action) (bool, runtime.Object, error) {
				if int(tries.Add(1)) <= tc.failures {
					return true, nil, tc.err
				}
				return false, nil, nil
			})
			r := startRecorder(t, client, "n1", testOptions())
			r.ServiceWarning(warn.svc, warn.uid, warn.reason, warn.message)
			r.Shutdown()
			if got := int(tries.Load()); got != tc.wantTries {
				t.Errorf("%d tries, want %d", got, tc.wantTries)
			}
			if got := len(storedEvents(t, client)) == 1; got != tc.wantEvent {
				t.Errorf("Event stored: %v, want %v", got, tc.wantEvent)
			}
			r.mu.Lock()
			_, seen := r.seen[seriesKey{warn.svc, warn.uid, warn.reason}]
			r.mu.Unlock()
			if seen != tc.wantEvent {
				t.Errorf("remembered as written: %v, want %v", seen, tc.wantEvent)
			}
		})
	}
}

// blockCreates makes creates hang until the returned release is called;
// entered receives a value as each create starts.
func blockCreates(t *testing.T, client *fake.Clientset) (entered <-chan struct{}, release func()) {
	in := make(chan struct{}, 100)
	gate := make(chan struct{})
	var once atomic.Bool
	client.PrependReactor("create", "events", func(k8stesting.Action) (bool, runtime.Object, error) {
		in <- struct{}{}
		<-gate
		return false, nil, nil
	})
	release = func() {
		if once.CompareAndSwap(false, true) {
			close(gate)
		}
	}
	t.Cleanup(release)
	return in, release
}

// A hanging API server never blocks the caller; the queue keeps the
// newest Events and drops the oldest.
func TestHangingAPINeverBlocks(t *testing.T) {
	client := fake.NewClientset()
	entered, release := blockCreates(t, client)
	o := testOptions()
	r := startRecorder(t, client, "n1", o)
	svc := func(i int) servicecache.ServiceKey {
		return servicecache.ServiceKey{Namespace: "default", Name: fmt.Sprintf("svc-%d", i)}
	}
	r.ServiceWarning(svc(0), "u", "R", "m")
	<-entered // the writer now hangs on svc-0
	const dropped = 3
	n := o.queueSize + dropped
	start := time.Now()
	for i := 1; i <= n; i++ {
		r.ServiceWarning(svc(i), "u", "R", "m")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("%d ServiceWarning calls took %v with the API hanging", n, d)
	}
	release()
	r.Shutdown()

	var got []string
	for _, ev := range storedEvents(t, client) {
		got = append(got, ev.Regarding.Name)
	}
	var want []string
	for i := 0; i <= n; i++ {
		if i < 1 || i > dropped {
			want = append(want, svc(i).Name)
		}
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("Events about %q, want %q (the oldest queued dropped)", got, want)
	}
}

// Shutdown waits a bounded time for a hanging API server.
func TestShutdownIsBounded(t *testing.T) {
	client := fake.NewClientset()
	entered, _ := blockCreates(t, client)
	o := testOptions()
	o.flushTimeout = 50 * time.Millisecond
	r := startRecorder(t, client, "n1", o)
	r.ServiceWarning(warn.svc, warn.uid, warn.reason, warn.message)
	<-entered
	start := time.Now()
	r.Shutdown()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	// Stopped: nothing more is taken.
	r.ServiceWarning(web, "uid-9", "Other", "m")
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) != 0 {
		t.Errorf("%d Events queued after Shutdown", len(r.queue))
	}
}

// The end of the constructor's context stops the recorder and flushes.
func TestContextEndFlushes(t *testing.T) {
	client := fake.NewClientset()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	r := newRecorder(ctx, client.EventsV1(), "n1", testOptions())
	r.ServiceWarning(warn.svc, warn.uid, warn.reason, warn.message)
	cancel()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("writer did not exit after the context ended")
	}
	if n := len(storedEvents(t, client)); n != 1 {
		t.Fatalf("%d Events stored, want the queued one", n)
	}
	r.Shutdown() // still fine
}
