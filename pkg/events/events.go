// Package events records Kubernetes Events about Services the proxy could
// not program as asked (e.g. an unknown scheduler in an annotation), so
// that `kubectl describe service` shows the problem to the Service's owner,
// not only the proxy's log.
//
// Each problem is one Event series per Service, reason and node, also
// across proxy restarts: Events get a name derived from what they are
// about instead of a random one, so a restarted proxy finds the series it
// wrote before (AlreadyExists) and bumps it instead of adding an object.
// This needs only the create and patch verbs on events, which the proxy's
// ServiceAccount has; it cannot get or list them.
package events

import (
	"context"
	"os"
	"sync"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	eventsclient "k8s.io/client-go/kubernetes/typed/events/v1"
	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// ReportingController is the controller name Events carry.
const ReportingController = "kube-ipvs-proxy"

// ActionProgramming is the Events' action: what the proxy was doing.
const ActionProgramming = "Programming"

// Recorder records Warning Events on Services.
type Recorder interface {
	ServiceWarning(svc servicecache.ServiceKey, uid types.UID, reason, message string)
}

// options are the recorder's limits; tests shorten them.
type options struct {
	// queueSize bounds the Events waiting to be written; beyond it the
	// oldest is dropped.
	queueSize int
	// callTimeout bounds each API call.
	callTimeout time.Duration
	// maxTries bounds the attempts to write one Event.
	maxTries int
	// backoff is the wait after the first failed attempt, doubled after
	// each further one up to maxBackoff.
	backoff, maxBackoff time.Duration
	// flushTimeout bounds the writing of queued Events once the recorder
	// stops (Shutdown or the constructor's context ending).
	flushTimeout time.Duration
}

var defaultOptions = options{
	queueSize:    256,
	callTimeout:  10 * time.Second,
	maxTries:     5,
	backoff:      time.Second,
	maxBackoff:   30 * time.Second,
	flushTimeout: 5 * time.Second,
}

// seriesKey identifies one series within a process: the node is the same
// for every Event a recorder writes.
type seriesKey struct {
	svc    servicecache.ServiceKey
	uid    types.UID
	reason string
}

// item is one Event waiting to be written.
type item struct {
	key seriesKey
	ev  *eventsv1.Event
	// exists is set once a create found the series already there, so
	// retries go straight to bumping it.
	exists bool
}

// APIRecorder writes events.k8s.io/v1 Events through the API server.
// ServiceWarning never blocks: Events go through a bounded queue to one
// writer goroutine. Each (Service, reason) is written at most once per
// process: the first time creates the series, or bumps it if an earlier
// run of the proxy on this node created it.
type APIRecorder struct {
	client   eventsclient.EventsV1Interface
	node     string
	instance string
	logger   klog.Logger
	opts     options

	mu      sync.Mutex
	seen    map[seriesKey]struct{} // queued, being written or written
	queue   []item
	stopped bool

	wake     chan struct{} // one pending wake-up for the writer
	stop     chan struct{} // closed when the recorder stops taking Events
	stopOnce sync.Once
	done     chan struct{} // closed when the writer has exited
	// apiCtx bounds every API call; it ends flushTimeout after stop.
	apiCtx    context.Context
	apiCancel context.CancelFunc
}

// NewAPIRecorderForNode starts a recorder writing Events as the proxy on
// nodeName. It stops taking Events when ctx ends or Shutdown is called,
// and then writes what is queued for at most a few seconds.
func NewAPIRecorderForNode(ctx context.Context, client kubernetes.Interface, nodeName string) *APIRecorder {
	return newRecorder(ctx, client.EventsV1(), nodeName, defaultOptions)
}

// NewAPIRecorder is NewAPIRecorderForNode with the hostname as the node
// name. Prefer NewAPIRecorderForNode with the name the proxy uses for its
// Node (--hostname-override), so the series stay the same when the
// hostname is not the node name.
func NewAPIRecorder(ctx context.Context, client kubernetes.Interface) *APIRecorder {
	host, err := os.Hostname()
	if err != nil {
		klog.FromContext(ctx).Error(err, "Cannot read the hostname for Events; naming the reporting instance without it")
	}
	return NewAPIRecorderForNode(ctx, client, host)
}

func newRecorder(ctx context.Context, client eventsclient.EventsV1Interface, nodeName string, o options) *APIRecorder {
	// API calls outlive ctx by up to flushTimeout, to write what is queued.
	apiCtx, apiCancel := context.WithCancel(context.WithoutCancel(ctx))
	r := &APIRecorder{
		client:    client,
		node:      nodeName,
		instance:  reportingInstance(nodeName),
		logger:    klog.FromContext(ctx),
		opts:      o,
		seen:      map[seriesKey]struct{}{},
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		apiCtx:    apiCtx,
		apiCancel: apiCancel,
	}
	go r.run()
	go func() {
		select {
		case <-ctx.Done():
			r.beginStop()
		case <-r.stop:
		}
		t := time.NewTimer(o.flushTimeout)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.done:
		}
		r.apiCancel()
	}()
	return r
}

// ServiceWarning queues a Warning Event about a Service and returns at
// once. Later calls for the same Service and reason do nothing.
func (r *APIRecorder) ServiceWarning(svc servicecache.ServiceKey, uid types.UID, reason, message string) {
	key := seriesKey{svc: svc, uid: uid, reason: reason}
	ev := newEvent(svc, uid, reason, message, r.node, r.instance, time.Now())

	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		r.logger.V(2).Info("Not recording Event: recorder stopped", "service", svc, "reason", reason)
		return
	}
	if _, dup := r.seen[key]; dup {
		r.mu.Unlock()
		return
	}
	r.seen[key] = struct{}{}
	var dropped *item
	if len(r.queue) >= r.opts.queueSize {
		d := r.queue[0]
		r.queue[0] = item{}
		r.queue = r.queue[1:]
		// It never reached the API server: a later call may queue it again.
		delete(r.seen, d.key)
		dropped = &d
	}
	r.queue = append(r.queue, item{key: key, ev: ev})
	r.mu.Unlock()

	if dropped != nil {
		r.logger.Info("Event queue full, dropping the oldest Event", "limit", r.opts.queueSize,
			"service", dropped.key.svc, "reason", dropped.key.reason)
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Shutdown stops taking Events and waits, for a bounded time, for the
// queued ones to be written.
func (r *APIRecorder) Shutdown() {
	r.beginStop()
	// The writer's calls end with apiCtx, flushTimeout after the stop; the
	// margin covers a client that does not honour its context.
	t := time.NewTimer(r.opts.flushTimeout + r.opts.flushTimeout/2 + 100*time.Millisecond)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C:
		r.mu.Lock()
		left := len(r.queue)
		r.mu.Unlock()
		r.logger.Error(nil, "Gave up waiting for Events to be written", "queued", left)
	}
}

func (r *APIRecorder) beginStop() {
	r.stopOnce.Do(func() {
		r.mu.Lock()
		r.stopped = true
		r.mu.Unlock()
		close(r.stop)
	})
}

// run is the writer: it writes queued Events one at a time until the
// recorder has stopped and the queue is empty, or the flush time is over.
func (r *APIRecorder) run() {
	defer close(r.done)
	for {
		it, ok := r.next()
		if !ok {
			return
		}
		r.write(it)
	}
}

// next returns the oldest queued Event, waiting for one; false once the
// recorder has stopped and nothing is left or the flush time is over.
func (r *APIRecorder) next() (item, bool) {
	for {
		if r.apiCtx.Err() != nil {
			r.mu.Lock()
			left := len(r.queue)
			r.queue = nil
			r.mu.Unlock()
			if left > 0 {
				r.logger.Error(nil, "Dropping Events not written before stopping", "count", left)
			}
			return item{}, false
		}
		r.mu.Lock()
		if len(r.queue) > 0 {
			it := r.queue[0]
			r.queue[0] = item{}
			r.queue = r.queue[1:]
			r.mu.Unlock()
			return it, true
		}
		stopped := r.stopped
		r.mu.Unlock()
		if stopped {
			return item{}, false
		}
		select {
		case <-r.wake:
		case <-r.stop:
		}
	}
}

// write writes one Event, retrying with backoff a bounded number of times.
func (r *APIRecorder) write(it item) {
	delay := r.opts.backoff
	for try := 1; ; try++ {
		err := r.attempt(&it)
		if err == nil {
			return
		}
		if !retriable(err) || try >= r.opts.maxTries || r.apiCtx.Err() != nil {
			r.logger.Error(err, "Cannot write Event, giving up", "event", klog.KObj(it.ev),
				"service", it.key.svc, "reason", it.key.reason, "attempts", try)
			// Nothing was written: let a later report try again.
			r.mu.Lock()
			delete(r.seen, it.key)
			r.mu.Unlock()
			return
		}
		r.logger.Info("Cannot write Event, will retry", "event", klog.KObj(it.ev),
			"service", it.key.svc, "reason", it.key.reason, "attempt", try, "err", err, "retryIn", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.apiCtx.Done():
			t.Stop()
		}
		delay = min(2*delay, r.opts.maxBackoff)
	}
}
