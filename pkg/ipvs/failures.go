package ipvs

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Reasons of ServiceFailure, the Warning Events' reasons.
const (
	// ReasonSchedulerUnavailable: the kernel has no module for the
	// scheduler a Service asks for (ENOENT on `ipvsadm -A`), or the
	// scheduler probe found none (see Schedulers).
	ReasonSchedulerUnavailable = "SchedulerUnavailable"
	// ReasonKernelRefused: the kernel refused an operation on one of the
	// Service's virtual servers, real servers or addresses.
	ReasonKernelRefused = "KernelRefused"
)

// Retry backoff of a failed operation: it doubles from minRetry up to
// maxRetry. A full Reconcile retries everything anyway (every sync period).
const (
	minRetry = time.Second
	maxRetry = time.Minute
)

// retry is the state of a virtual server or address whose last op failed.
type retry struct {
	err      error
	attempts int
	next     time.Time // not retried by ApplyServices before
}

// ServiceFailure is a Service the kernel refused to program, in part or
// whole: the rest of the node's Services are unaffected.
type ServiceFailure struct {
	Service servicecache.ServiceKey
	Reason  string
	// Message names the refused operation (as a command line) and the
	// kernel's answer.
	Message string
}

// recordFailure records that an op on key (a virtual server in a.retryVS, an
// address in a.retryAddrs) failed with err: it is retried after a backoff
// that doubles with each attempt.
func recordFailure[K comparable](a *Applier, m map[K]*retry, key K, err error) {
	r := m[key]
	if r == nil {
		r = &retry{}
		m[key] = r
	}
	r.err = err
	r.attempts++
	r.next = a.now().Add(backoff(r.attempts))
}

func backoff(attempts int) time.Duration {
	d := minRetry
	for i := 1; i < attempts && d < maxRetry; i++ {
		d *= 2
	}
	return min(d, maxRetry)
}

// carry adds the attempts of the retries before an execute run to those
// that failed again in it, so that the backoff keeps growing.
func (a *Applier) carry(prevVS map[VSKey]*retry, prevAddrs map[netip.Addr]*retry) {
	for key, r := range a.retryVS {
		if p := prevVS[key]; p != nil && p != r {
			r.attempts += p.attempts
			r.next = a.now().Add(backoff(r.attempts))
		}
	}
	for addr, r := range a.retryAddrs {
		if p := prevAddrs[addr]; p != nil && p != r {
			r.attempts += p.attempts
			r.next = a.now().Add(backoff(r.attempts))
		}
	}
}

// NextRetry is when the earliest failed op is due for a retry by
// ApplyServices (zero: none waits).
func (a *Applier) NextRetry() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	var next time.Time
	for _, r := range a.retryVS {
		if next.IsZero() || r.next.Before(next) {
			next = r.next
		}
	}
	for _, r := range a.retryAddrs {
		if next.IsZero() || r.next.Before(next) {
			next = r.next
		}
	}
	return next
}

// Failures lists the Services with a kernel operation that failed and
// waits for a retry, one entry per Service and reason, sorted.
func (a *Applier) Failures() []ServiceFailure {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[ServiceFailure]struct{}{}
	add := func(svc servicecache.ServiceKey, err error) {
		if svc == (servicecache.ServiceKey{}) {
			return
		}
		seen[ServiceFailure{Service: svc, Reason: failureReason(err), Message: err.Error()}] = struct{}{}
	}
	for key, r := range a.retryVS {
		if vs := a.desired[key]; vs != nil {
			add(vs.Service, r.err)
		}
	}
	for addr, r := range a.retryAddrs {
		for _, svc := range a.bindersOf(addr) {
			add(svc, r.err)
		}
	}
	out := slices.Collect(maps.Keys(seen))
	slices.SortFunc(out, func(x, y ServiceFailure) int {
		if c := x.Service.Compare(y.Service); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(x.Reason, y.Reason), cmp.Compare(x.Message, y.Message))
	})
	return out
}

// bindersOf returns the Services whose wanted virtual servers need addr
// bound on kube-ipvs0, sorted.
func (a *Applier) bindersOf(addr netip.Addr) []servicecache.ServiceKey {
	if a.addrRefs[addr] == 0 {
		return nil
	}
	var out []servicecache.ServiceKey
	for key, vs := range a.desired {
		if key.Addr == addr && vs.Bind && !slices.Contains(out, vs.Service) {
			out = append(out, vs.Service)
		}
	}
	slices.SortFunc(out, servicecache.ServiceKey.Compare)
	return out
}

// failureReason names the cause of a refused op for the Service's Event.
func failureReason(err error) string {
	var op *opFailure
	if errors.As(err, &op) && errors.Is(err, syscall.ENOENT) && (op.kind == OpAddService || op.kind == OpUpdateService) {
		// ip_vs_scheduler_get: "Scheduler module ip_vs_NAME not found".
		return ReasonSchedulerUnavailable
	}
	return ReasonKernelRefused
}

// opFailure is a failed op: its command line, its Service and the
// kernel's error.
type opFailure struct {
	kind OpKind
	msg  string
	err  error
}

func (e *opFailure) Error() string { return e.msg }
func (e *opFailure) Unwrap() error { return e.err }

// nodeError decides whether the failures of one execute run are the
// node's (returned, so that the sync counts as failed and the proxy's
// health reflects it) or only some Services' (recorded for Failures and
// retried with backoff, and the sync counts as a success). They are the
// node's when an op serves no Service (the dummy link, an address no
// Service binds) or when every op failed across more than one Service:
// the kernel refuses everything, which is no Service's doing.
func (a *Applier) nodeError(ops []Op, ok []bool, err error) error {
	if err == nil {
		return nil
	}
	failed, attempted := 0, 0
	services := map[servicecache.ServiceKey]struct{}{}
	notAdded := map[VSKey]bool{} // as execute: their later ops were skipped
	for i, op := range ops {
		if ok[i] {
			attempted++
			continue
		}
		if op.VS != nil && notAdded[op.VS.Key] {
			continue
		}
		if op.Kind == OpAddService {
			notAdded[op.VS.Key] = true
		}
		attempted++
		failed++
		var svcs []servicecache.ServiceKey
		switch {
		case op.VS != nil && op.VS.Service != (servicecache.ServiceKey{}):
			svcs = []servicecache.ServiceKey{op.VS.Service}
		case op.VS == nil:
			svcs = a.bindersOf(op.Addr)
		}
		if len(svcs) == 0 && op.Kind != OpDeleteService && op.Kind != OpDeleteDestination && op.Kind != OpDeleteAddress {
			return err
		}
		// A stale server or address that could not be removed serves no
		// Service: it is retried, and logged by the caller.
		for _, s := range svcs {
			services[s] = struct{}{}
		}
	}
	if failed == attempted && failed > 1 && len(services) != 1 {
		return fmt.Errorf("the kernel refused every operation: %w", err)
	}
	return nil
}
