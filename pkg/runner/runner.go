// Package runner is the proxy's sync loop: one coalescing trigger, a minimum
// interval between syncs, a periodic full resync, and retries with backoff.
//
// Semantics follow kube-proxy's --ipvs-min-sync-period and
// --ipvs-sync-period: any number of triggers while a sync is pending or
// running collapse into one sync; two syncs start at least MinInterval
// apart; a full resync runs at least every SyncPeriod; a failed sync is
// retried as a full resync after a backoff that doubles up to MaxBackoff.
// A change triggered during that backoff does not wait for it: it is synced
// after MinInterval, so that a failing step (iptables behind a held lock)
// never holds back the others (IPVS) for longer than one sync.
// TriggerAt asks for a sync at a given time (a per-Service retry whose
// backoff ends then).
package runner

import (
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// SyncFunc performs one sync. full asks for a full reconcile (re-read the
// kernel, repair drift); otherwise only what changed since the last sync.
type SyncFunc func(ctx context.Context, full bool) error

// Runner runs a SyncFunc under the loop's rules.
type Runner struct {
	sync        SyncFunc
	minInterval time.Duration
	syncPeriod  time.Duration
	minBackoff  time.Duration
	maxBackoff  time.Duration
	clock       clock.WithTicker

	trigger chan struct{}
	// wake makes the loop look at `at` again.
	wake chan struct{}
	mu   sync.Mutex
	at   time.Time // TriggerAt's earliest time not yet synced (zero: none)
}

// Options configure a Runner. Zero values take the defaults.
type Options struct {
	MinInterval time.Duration // default 1s
	SyncPeriod  time.Duration // default 30s
	MinBackoff  time.Duration // default 1s
	MaxBackoff  time.Duration // default 30s
	Clock       clock.WithTicker
}

// New returns a Runner for sync.
func New(sync SyncFunc, o Options) *Runner {
	r := &Runner{sync: sync, minInterval: o.MinInterval, syncPeriod: o.SyncPeriod,
		minBackoff: o.MinBackoff, maxBackoff: o.MaxBackoff, clock: o.Clock,
		trigger: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
	if r.minInterval <= 0 {
		// kube-proxy's IPVS mode never syncs more than once a second.
		r.minInterval = time.Second
	}
	if r.syncPeriod <= 0 {
		r.syncPeriod = 30 * time.Second
	}
	if r.minBackoff <= 0 {
		r.minBackoff = time.Second
	}
	if r.maxBackoff <= 0 {
		r.maxBackoff = 30 * time.Second
	}
	if r.clock == nil {
		r.clock = clock.RealClock{}
	}
	return r
}

// Trigger asks for a sync; it never blocks, and triggers coalesce.
func (r *Runner) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// TriggerAt asks for a sync at t (the earliest time asked since the last
// sync wins); it never blocks.
func (r *Runner) TriggerAt(t time.Time) {
	r.mu.Lock()
	if r.at.IsZero() || t.Before(r.at) {
		r.at = t
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// due returns the time TriggerAt asked for (zero: none).
func (r *Runner) due() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.at
}

// Loop runs syncs until ctx is done. The first sync is a full one and runs
// at once.
func (r *Runner) Loop(ctx context.Context) {
	var (
		lastStart time.Time
		pending   = true // the first, full sync
		full      = true
		// triggered: a change is pending, which waits only for the
		// minimum interval, not for a failure's backoff.
		triggered = false
		backoff   time.Duration
		nextFull  = r.clock.Now().Add(r.syncPeriod)
	)
	for {
		now := r.clock.Now()
		var wait time.Duration
		switch {
		case pending:
			// Respect the minimum interval (and the backoff after a failure).
			gap := r.minInterval
			if backoff > gap && !triggered {
				gap = backoff
			}
			if !lastStart.IsZero() {
				wait = lastStart.Add(gap).Sub(now)
			}
		default:
			wait = nextFull.Sub(now)
			if at := r.due(); !at.IsZero() && at.Before(nextFull) {
				wait = at.Sub(now)
			}
		}
		if wait > 0 {
			timer := r.clock.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-r.trigger:
				timer.Stop()
				pending, triggered = true, true
				continue
			case <-r.wake:
				timer.Stop()
				continue
			case <-timer.C():
				if !pending {
					// The periodic resync, or a retry asked for, is due.
					if at := r.due(); !at.IsZero() && !r.clock.Now().Before(at) {
						pending = true
					} else {
						pending, full = true, true
					}
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		default:
		}
		// Drain a trigger that arrived meanwhile: this sync covers it.
		select {
		case <-r.trigger:
		default:
		}
		if !r.clock.Now().Before(nextFull) {
			full = true
		}
		lastStart = r.clock.Now()
		r.mu.Lock()
		if !r.at.IsZero() && !lastStart.Before(r.at) {
			r.at = time.Time{} // this sync is the retry asked for
		}
		r.mu.Unlock()
		triggered = false
		err := r.sync(ctx, full)
		if err != nil {
			if backoff == 0 {
				backoff = r.minBackoff
			} else if backoff *= 2; backoff > r.maxBackoff {
				backoff = r.maxBackoff
			}
			klog.ErrorS(err, "Sync failed; retrying with a full resync", "full", full, "retryIn", max(backoff, r.minInterval))
			// After an error the kernel state is uncertain: resync it all.
			pending, full = true, true
			continue
		}
		backoff = 0
		if full {
			nextFull = lastStart.Add(r.syncPeriod)
		}
		pending, full = false, false
	}
}
