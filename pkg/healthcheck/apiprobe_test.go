package healthcheck

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	testingclock "k8s.io/utils/clock/testing"
)

// The probe records a contact for each answered /readyz and none while the
// API server fails.
func TestProbeAPIServer(t *testing.T) {
	var ready atomic.Bool
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		if !ready.Load() {
			http.Error(w, "etcd down", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer srv.Close()
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	clk := testingclock.NewFakePassiveClock(start)
	hs := newProxyHealthServer("127.0.0.1:0", timeout, func() *v1.Node { return makeNode() }, clk)
	hs.SetAPIServerTimeout(time.Minute)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ProbeAPIServer(ctx, cs.Discovery().RESTClient(), 10*time.Millisecond, hs) }()
	defer func() { cancel(); <-done }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("failing probes", func() bool { return calls.Load() >= 3 })
	clk.SetTime(start.Add(2 * time.Minute))
	if ok, checked := hs.APIServerReachable(); ok || !checked {
		t.Fatalf("reachable %v checked %v while /readyz fails, want false true", ok, checked)
	}
	ready.Store(true)
	waitFor("a contact after /readyz answers", func() bool { ok, _ := hs.APIServerReachable(); return ok })
}
