package runner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// recorder records syncs and lets the test fail them on demand.
type recorder struct {
	mu    sync.Mutex
	calls []bool // full flag per call
	fail  int    // fail this many next calls
	ch    chan bool
}

func (r *recorder) sync(_ context.Context, full bool) error {
	r.mu.Lock()
	r.calls = append(r.calls, full)
	failing := r.fail > 0
	if failing {
		r.fail--
	}
	r.mu.Unlock()
	r.ch <- full
	if failing {
		return errors.New("injected")
	}
	return nil
}

func start(t *testing.T, o Options) (*Runner, *recorder, *clocktesting.FakeClock, func()) {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	o.Clock = clk
	rec := &recorder{ch: make(chan bool, 100)}
	r := New(rec.sync, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Loop(ctx); close(done) }()
	return r, rec, clk, func() { cancel(); <-done }
}

// next waits for the next sync and returns its full flag.
func next(t *testing.T, rec *recorder) bool {
	t.Helper()
	select {
	case full := <-rec.ch:
		return full
	case <-time.After(5 * time.Second):
		t.Fatal("no sync happened")
		return false
	}
}

func none(t *testing.T, rec *recorder) {
	t.Helper()
	select {
	case full := <-rec.ch:
		t.Fatalf("unexpected sync (full=%v)", full)
	case <-time.After(50 * time.Millisecond):
	}
}

// waitTimer waits until the loop is blocked on a timer, so that stepping
// the fake clock reaches it.
func waitTimer(t *testing.T, clk *clocktesting.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !clk.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("the loop never waited on a timer")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFirstSyncIsFullAndImmediate(t *testing.T) {
	_, rec, _, stop := start(t, Options{})
	defer stop()
	if !next(t, rec) {
		t.Fatal("first sync was not full")
	}
}

func TestTriggersCoalesceAndRespectMinInterval(t *testing.T) {
	r, rec, clk, stop := start(t, Options{MinInterval: time.Second, SyncPeriod: time.Minute})
	defer stop()
	next(t, rec)
	waitTimer(t, clk)
	for i := 0; i < 10; i++ {
		r.Trigger()
	}
	// Within the minimum interval nothing runs.
	waitTimer(t, clk)
	none(t, rec)
	clk.Step(time.Second)
	if next(t, rec) {
		t.Fatal("a triggered sync within the period should be incremental")
	}
	none(t, rec) // ten triggers, one sync
}

func TestPeriodicFullResync(t *testing.T) {
	_, rec, clk, stop := start(t, Options{MinInterval: time.Second, SyncPeriod: 30 * time.Second})
	defer stop()
	next(t, rec)
	waitTimer(t, clk)
	clk.Step(29 * time.Second)
	none(t, rec)
	waitTimer(t, clk)
	clk.Step(time.Second)
	if !next(t, rec) {
		t.Fatal("the periodic sync was not full")
	}
}

func TestFailureRetriesWithBackoffAsFull(t *testing.T) {
	r, rec, clk, stop := start(t, Options{MinInterval: time.Second, SyncPeriod: time.Hour, MinBackoff: 2 * time.Second, MaxBackoff: 8 * time.Second})
	defer stop()
	next(t, rec)
	rec.mu.Lock()
	rec.fail = 3
	rec.mu.Unlock()
	waitTimer(t, clk)
	r.Trigger()
	waitTimer(t, clk)
	clk.Step(time.Second)
	if next(t, rec) {
		t.Fatal("the triggered sync should be incremental")
	}
	// Fails; retried after 2s, 4s, 8s as full syncs.
	for _, wait := range []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second} {
		waitTimer(t, clk)
		clk.Step(wait - time.Millisecond)
		none(t, rec)
		waitTimer(t, clk)
		clk.Step(time.Millisecond)
		if !next(t, rec) {
			t.Fatalf("retry after %s was not full", wait)
		}
	}
	// The last retry succeeded: back to quiet.
	waitTimer(t, clk)
	none(t, rec)
}

// A change triggered while a failed sync waits for its backoff is synced
// after the minimum interval: a failing step never holds the others back
// for longer than one sync.
func TestTriggerDuringBackoffWaitsOnlyMinInterval(t *testing.T) {
	r, rec, clk, stop := start(t, Options{MinInterval: time.Second, SyncPeriod: time.Hour, MinBackoff: 8 * time.Second, MaxBackoff: 8 * time.Second})
	defer stop()
	rec.mu.Lock()
	rec.fail = 2
	rec.mu.Unlock()
	next(t, rec) // the first sync fails: the retry waits 8s
	waitTimer(t, clk)
	r.Trigger()
	waitTimer(t, clk)
	clk.Step(time.Second - time.Millisecond)
	none(t, rec)
	waitTimer(t, clk)
	clk.Step(time.Millisecond)
	if !next(t, rec) {
		t.Fatal("the sync after a failure should be full")
	}
	// That one failed too, with nothing triggered: the backoff applies.
	waitTimer(t, clk)
	clk.Step(8*time.Second - time.Millisecond)
	none(t, rec)
	waitTimer(t, clk)
	clk.Step(time.Millisecond)
	next(t, rec)
}

// TriggerAt syncs at the time asked for, incrementally, and only once.
func TestTriggerAt(t *testing.T) {
	r, rec, clk, stop := start(t, Options{MinInterval: time.Second, SyncPeriod: time.Hour})
	defer stop()
	next(t, rec)
	waitTimer(t, clk)
	r.TriggerAt(clk.Now().Add(5 * time.Second))
	r.TriggerAt(clk.Now().Add(9 * time.Second)) // later: the earlier wins
	waitTimer(t, clk)
	clk.Step(5*time.Second - time.Millisecond)
	none(t, rec)
	waitTimer(t, clk)
	clk.Step(time.Millisecond)
	if next(t, rec) {
		t.Fatal("a retry asked for should be an incremental sync")
	}
	waitTimer(t, clk)
	clk.Step(10 * time.Second)
	none(t, rec)
}
