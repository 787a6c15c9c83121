package healthcheck

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-base/metrics/legacyregistry"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
)

const (
	v4 = v1.IPv4Protocol
	v6 = v1.IPv6Protocol

	timeout = 60 * time.Second // 2x a 30s sync period
)

var start = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// step is one action on the server: advance the clock, then queue and/or
// mark families updated.
type step struct {
	advance  time.Duration
	queued   []v1.IPFamily
	updated  []v1.IPFamily
	loop     bool // the sync loop starts (SyncLoopRunning)
	progress bool // the sync reports progress
}

func TestHealth(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
		// want* describe Health() after the steps.
		wantHealthy bool
		wantStatus  map[v1.IPFamily]bool
	}{
		{
			name:        "nothing recorded yet is healthy",
			wantHealthy: true,
			wantStatus:  map[v1.IPFamily]bool{},
		},
		{
			name:        "queued before the first sync is not judged",
			steps:       []step{{queued: []v1.IPFamily{v4}}, {advance: 10 * timeout}},
			wantHealthy: true,
			wantStatus:  map[v1.IPFamily]bool{},
		},
		{
			name:        "synced long ago with nothing queued stays healthy",
			steps:       []step{{updated: []v1.IPFamily{v4, v6}}, {advance: 10 * timeout}},
			wantHealthy: true,
			wantStatus:  map[v1.IPFamily]bool{v4: true, v6: true},
		},
		{
			name:        "sync loop running: no successful sync for the timeout is unhealthy",
			steps:       []step{{updated: []v1.IPFamily{v4}}, {advance: time.Minute, loop: true}, {advance: time.Second, updated: []v1.IPFamily{v4}}, {advance: timeout}},
			wantHealthy: false,
			wantStatus:  map[v1.IPFamily]bool{v4: false},
		},
		{
			name: "the first sync (a cold start) is not judged by the timeout, nor are changes queued meanwhile",
			steps: []step{{updated: []v1.IPFamily{v4}}, {loop: true}, {advance: time.Second, queued: []v1.IPFamily{v4}},
				{advance: StartupTimeoutFactor*timeout - time.Second - time.Nanosecond}},
			wantHealthy: true,
			wantStatus:  map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "a first sync making progress is never judged by its length",
			steps: []step{{updated: []v1.IPFamily{v4}}, {loop: true}, {advance: 9 * timeout, progress: true}, {advance: 9 * timeout, progress: true},
				{advance: StartupTimeoutFactor*timeout - time.Nanosecond}},
			wantHealthy: true,
			wantStatus:  map[v1.IPFamily]bool{v4: true},
		},
		{
			name:        "a first sync that stops making progress is unhealthy after the startup timeout",
			steps:       []step{{updated: []v1.IPFamily{v4}}, {loop: true}, {advance: 9 * timeout, progress: true}, {advance: StartupTimeoutFactor * timeout}},
			wantHealthy: false,
			wantStatus:  map[v1.IPFamily]bool{v4: false},
		},
		{
			name:        "a first sync that never ends is unhealthy after the startup timeout",
			steps:       []step{{updated: []v1.IPFamily{v4}}, {loop: true}, {advance: StartupTimeoutFactor * timeout}},
			wantHealthy: false,
			wantStatus:  map[v1.IPFamily]bool{v4: false},
		},
		{
			name: "after the first sync the usual rules apply",
			steps: []step{{updated: []v1.IPFamily{v4}}, {loop: true}, {advance: 5 * timeout, updated: []v1.IPFamily{v4}},
				{queued: []v1.IPFamily{v4}}, {advance: timeout}},
			wantHealthy: false,
			wantStatus:  map[v1.IPFamily]bool{v4: false},
		},
		{
			name:        "sync loop running: periodic syncs keep it healthy with nothing queued",
			steps:       []step{{updated: []v1.IPFamily{v4}}, {loop: true}, {advance: timeout / 2, updated: []v1.IPFamily{v4}}, {advance: timeout - time.Nanosecond}},
			wantHealthy: true,
			wantStatus:  map[v1.IPFamily]bool{v4: true},
		},
		{
			name:        "sync loop running: recovers by itself with the next successful sync",
			steps:       []step{{updated: []v1.IPFamily{v4}}, {loop: true}, {advance: 3 * timeout}, {advance: time.Second, updated: []v1.IPFamily{v4}}},
			wantHealthy: true,
			wantStatus:  map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "queued just under the timeout is healthy",
			steps: []step{
				{updated: []v1.IPFamily{v4}},
				{queued: []v1.IPFamily{v4}},
				{advance: timeout - time.Nanosecond},
			},
			wantHealthy: true,
			wantStatus:  map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "queued for the timeout is unhealthy",
			steps: []step{
				{updated: []v1.IPFamily{v4}},
				{queued: []v1.IPFamily{v4}},
				{advance: timeout},
			},
			wantHealthy: false,
			wantStatus:  map[v1.IPFamily]bool{v4: false},
		},
		{
			name: "later queues do not reset the oldest pending change",
			steps: []step{
				{updated: []v1.IPFamily{v4}},
				{queued: []v1.IPFamily{v4}},
				{advance: timeout / 2, queued: []v1.IPFamily{v4}},
				{advance: timeout / 2},
			},
			wantHealthy: false,
			wantStatus:  map[v1.IPFamily]bool{v4: false},
		},
		{
			name: "a sync clears the pending change",
			steps: []step{
				{updated: []v1.IPFamily{v4}},
				{queued: []v1.IPFamily{v4}},
				{advance: 2 * timeout, updated: []v1.IPFamily{v4}},
				{advance: 2 * timeout},
			},
			wantHealthy: true,
			wantStatus:  map[v1.IPFamily]bool{v4: true},
		},
		{
			name: "one stuck family makes the whole proxy unhealthy",
			steps: []step{
				{updated: []v1.IPFamily{v4, v6}},
				{queued: []v1.IPFamily{v4, v6}},
				{advance: timeout, updated: []v1.IPFamily{v4}},
			},
			wantHealthy: false,
			wantStatus:  map[v1.IPFamily]bool{v4: true, v6: false},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := testingclock.NewFakePassiveClock(start)
			hs := newProxyHealthServer("127.0.0.1:0", timeout, nil, clk)
			lastUpdated := map[v1.IPFamily]time.Time{}
			var latest time.Time
			for _, s := range tc.steps {
				clk.SetTime(clk.Now().Add(s.advance))
				if s.loop {
					hs.SyncLoopRunning()
					for f := range lastUpdated {
						lastUpdated[f] = clk.Now()
						latest = clk.Now()
					}
				}
				if s.progress {
					hs.Progress()
				}
				for _, f := range s.queued {
					hs.QueuedUpdate(f)
				}
				for _, f := range s.updated {
					hs.Updated(f)
					lastUpdated[f] = clk.Now()
					latest = clk.Now()
				}
			}

			got := hs.Health()
			if got.Healthy != tc.wantHealthy {
				t.Errorf("Healthy = %v, want %v", got.Healthy, tc.wantHealthy)
			}
			if !got.CurrentTime.Equal(clk.Now()) {
				t.Errorf("CurrentTime = %v, want %v", got.CurrentTime, clk.Now())
			}
			if !got.LastUpdated.Equal(latest) {
				t.Errorf("LastUpdated = %v, want %v", got.LastUpdated, latest)
			}
			if len(got.Status) != len(tc.wantStatus) {
				t.Errorf("Status = %v, want families %v", got.Status, tc.wantStatus)
			}
			for f, want := range tc.wantStatus {
				st, ok := got.Status[f]
				if !ok {
					t.Errorf("Status lacks %s", f)
					continue
				}
				if st.Healthy != want {
					t.Errorf("Status[%s].Healthy = %v, want %v", f, st.Healthy, want)
				}
				if !st.LastUpdated.Equal(lastUpdated[f]) {
					t.Errorf("Status[%s].LastUpdated = %v, want %v", f, st.LastUpdated, lastUpdated[f])
				}
			}
		})
	}
}

// /healthz fails once the API server has not answered for the timeout;
// /livez does not; an answer makes /healthz healthy again.
func TestAPIServerTimeout(t *testing.T) {
	clk := testingclock.NewFakePassiveClock(start)
	hs := newProxyHealthServer("127.0.0.1:0", timeout, func() *v1.Node { return makeNode() }, clk)
	hs.Updated(v4)
	hs.SetAPIServerTimeout(2 * time.Minute)
	get := func(path string) (int, ProxyHealth) {
		rec := httptest.NewRecorder()
		hs.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var h ProxyHealth
		if err := json.Unmarshal(rec.Body.Bytes(), &h); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return rec.Code, h
	}
	steps := []struct {
		advance        time.Duration
		reached        bool
		healthz, livez int
		reachable      bool
	}{
		{0, false, 200, 200, true},
		{2*time.Minute - time.Second, false, 200, 200, true},
		{time.Second, false, 503, 200, false},
		{time.Second, true, 200, 200, true},
	}
	for i, st := range steps {
		clk.SetTime(clk.Now().Add(st.advance))
		hs.Updated(v4) // syncs go on from the cached state
		if st.reached {
			hs.APIServerReached()
		}
		code, h := get("/healthz")
		if code != st.healthz || h.APIServerReachable == nil || *h.APIServerReachable != st.reachable {
			t.Errorf("step %d: /healthz %d reachable %v, want %d %v", i, code, h.APIServerReachable, st.healthz, st.reachable)
		}
		if code, h := get("/livez"); code != st.livez || h.APIServerReachable != nil {
			t.Errorf("step %d: /livez %d (apiServerReachable %v), want %d without the field", i, code, h.APIServerReachable, st.livez)
		}
	}
}

func makeNode(mods ...func(*v1.Node)) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	for _, m := range mods {
		m(n)
	}
	return n
}

func tainted(key string) func(*v1.Node) {
	return func(n *v1.Node) {
		n.Spec.Taints = append(n.Spec.Taints, v1.Taint{Key: key, Effect: v1.TaintEffectNoSchedule})
	}
}

func deleting(n *v1.Node) {
	ts := metav1.NewTime(start)
	n.DeletionTimestamp = &ts
}

func TestHandlers(t *testing.T) {
	metrics.Register()

	tests := []struct {
		name        string
		node        *v1.Node
		nilNodeFn   bool
		stuck       bool // a change queued past the timeout
		wantHealthz int
		wantLivez   int
		wantElig    bool
	}{
		{name: "healthy node", node: makeNode(), wantHealthz: 200, wantLivez: 200, wantElig: true},
		{name: "other taint is fine", node: makeNode(tainted("example.com/other")), wantHealthz: 200, wantLivez: 200, wantElig: true},
		{name: "node unknown", node: nil, wantHealthz: 503, wantLivez: 200},
		{name: "no node source", nilNodeFn: true, wantHealthz: 503, wantLivez: 200},
		{name: "node being deleted", node: makeNode(deleting), wantHealthz: 503, wantLivez: 200},
		{name: "autoscaler taint", node: makeNode(tainted(ToBeDeletedTaint)), wantHealthz: 503, wantLivez: 200},
		{name: "stuck sync", node: makeNode(), stuck: true, wantHealthz: 503, wantLivez: 503, wantElig: true},
		{name: "stuck sync and tainted", node: makeNode(tainted(ToBeDeletedTaint)), stuck: true, wantHealthz: 503, wantLivez: 503},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := testingclock.NewFakeClock(start)
			var nodeFn func() *v1.Node
			if !tc.nilNodeFn {
				node := tc.node
				nodeFn = func() *v1.Node { return node }
			}
			hs := newProxyHealthServer("127.0.0.1:0", timeout, nodeFn, clk)
			hs.Updated(v4)
			clk.Step(time.Second)
			syncedAt := clk.Now()
			hs.Updated(v6)
			if tc.stuck {
				hs.QueuedUpdate(v4)
			}
			clk.Step(timeout)
			h := hs.Handler()

			for _, ep := range []struct {
				path    string
				want    int
				counter string
			}{
				{"/healthz", tc.wantHealthz, "kubeproxy_proxy_healthz_total"},
				{"/livez", tc.wantLivez, "kubeproxy_proxy_livez_total"},
			} {
				code := map[int]string{200: metrics.CodeOK, 503: metrics.CodeServiceUnavailable}[ep.want]
				before := counterValue(t, ep.counter, code)

				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, ep.path, nil))
				if rec.Code != ep.want {
					t.Errorf("%s: status %d, want %d", ep.path, rec.Code, ep.want)
				}
				if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
					t.Errorf("%s: Content-Type %q", ep.path, ct)
				}
				if v := rec.Header().Get("X-Content-Type-Options"); v != "nosniff" {
					t.Errorf("%s: X-Content-Type-Options %q", ep.path, v)
				}
				if after := counterValue(t, ep.counter, code); after != before+1 {
					t.Errorf("%s: %s{code=%q} went %v -> %v, want +1", ep.path, ep.counter, code, before, after)
				}

				var body ProxyHealth
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
					t.Fatalf("%s: body %q: %v", ep.path, rec.Body.String(), err)
				}
				syncHealthy := !tc.stuck
				if body.Healthy != syncHealthy {
					t.Errorf("%s: healthy %v, want %v", ep.path, body.Healthy, syncHealthy)
				}
				if !body.CurrentTime.Equal(clk.Now()) {
					t.Errorf("%s: currentTime %v, want %v", ep.path, body.CurrentTime, clk.Now())
				}
				// Healthy responses report "now"; unhealthy the real last sync.
				wantLast := syncedAt
				if ep.want == 200 {
					wantLast = clk.Now()
				}
				if !body.LastUpdated.Equal(wantLast) {
					t.Errorf("%s: lastUpdated %v, want %v", ep.path, body.LastUpdated, wantLast)
				}
				if len(body.Status) != 2 || body.Status[v4].Healthy == tc.stuck || !body.Status[v6].Healthy {
					t.Errorf("%s: status %+v", ep.path, body.Status)
				}
				switch ep.path {
				case "/healthz":
					if body.NodeEligible == nil || *body.NodeEligible != tc.wantElig {
						t.Errorf("/healthz: nodeEligible %v, want %v", body.NodeEligible, tc.wantElig)
					}
				case "/livez":
					if body.NodeEligible != nil {
						t.Errorf("/livez: nodeEligible set: %v", *body.NodeEligible)
					}
				}
			}
		})
	}
}

// TestJSONShape pins the wire format kube-proxy clients parse.
func TestJSONShape(t *testing.T) {
	clk := testingclock.NewFakeClock(start)
	hs := newProxyHealthServer("127.0.0.1:0", timeout, func() *v1.Node { return makeNode() }, clk)
	hs.Updated(v4)
	rec := httptest.NewRecorder()
	hs.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	want := `{"lastUpdated":"2026-01-02T03:04:05Z","currentTime":"2026-01-02T03:04:05Z","nodeEligible":true,` +
		`"healthy":true,"status":{"IPv4":{"lastUpdated":"2026-01-02T03:04:05Z","healthy":true}}}`
	if got := rec.Body.String(); got != want {
		t.Errorf("body:\n got %s\nwant %s", got, want)
	}
}

func TestRun(t *testing.T) {
	t.Run("bad address", func(t *testing.T) {
		hs := NewProxyHealthServer("nonsense", timeout, nil)
		if err := hs.Run(context.Background()); err == nil {
			t.Fatal("Run with a bad address: want error")
		}
	})
	t.Run("serves until cancelled", func(t *testing.T) {
		var calls atomic.Int32
		hs := NewProxyHealthServer("127.0.0.1:0", timeout, func() *v1.Node {
			calls.Add(1)
			return makeNode()
		})
		ctx, cancel := context.WithCancel(context.Background())
		ln, err := metrics.Listen(ctx, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- hs.Serve(ctx, ln) }()

		resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || calls.Load() != 1 {
			t.Errorf("GET /healthz: status %d, node lookups %d", resp.StatusCode, calls.Load())
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve after cancel: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after cancel")
		}
	})
}

// counterValue reads name{code=code} from the registry; 0 if absent.
func counterValue(t *testing.T, name, code string) float64 {
	t.Helper()
	families, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "code" && l.GetValue() == code {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
