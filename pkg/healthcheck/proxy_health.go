// Package healthcheck is the proxy's health server: /healthz and /livez on
// --healthz-bind-address, with kube-proxy's semantics and JSON body so that
// probes, load balancers and tooling written for kube-proxy keep working.
package healthcheck

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	basemetrics "k8s.io/component-base/metrics"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
)

// ToBeDeletedTaint is the taint the Cluster Autoscaler puts on a node it is
// about to delete; /healthz fails on such a node so that cloud load
// balancers drain it first.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ProxierHealth is the health of the proxier of one IP family.
type ProxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// ProxyHealth is the JSON body of /healthz and /livez, identical in shape
// to kube-proxy's.
type ProxyHealth struct {
	// LastUpdated is the latest sync of any family; when healthy it is
	// reported as the current time, as kube-proxy does for compatibility
	// with clients that compare it with the clock.
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is only set in /healthz responses.
	NodeEligible *bool `json:"nodeEligible,omitempty"`
	// APIServerReachable is only set in /healthz responses when the API
	// server check is on (see SetAPIServerTimeout).
	APIServerReachable *bool `json:"apiServerReachable,omitempty"`
	// Healthy is true when every family is healthy.
	Healthy bool                          `json:"healthy"`
	Status  map[v1.IPFamily]ProxierHealth `json:"status,omitempty"`
}

// StartupTimeoutFactor: the first sync after the loop starts may go this
// many health timeouts (10 minutes at the default sync period) without
// progress (Progress: a phase done, a batch of kernel operations) before
// /livez fails. A cold sync of 10,000 Services on a busy node under the
// DaemonSet's CPU request takes minutes, and a restart would only start it
// over while the kernel state of before keeps Services working; one that
// makes no progress at all is hung.
const StartupTimeoutFactor = 10

// ProxyHealthServer tracks sync progress per IP family and serves it.
//
// The sync loop calls QueuedUpdate when it learns of a change and Updated
// when a sync succeeds. A family is unhealthy once a queued change has
// waited healthTimeout without a sync (kube-proxy's rule), and, once the
// sync loop runs (SyncLoopRunning), when no sync has succeeded for
// healthTimeout: the periodic resync runs every sync period, half the
// timeout, so syncs that fail or hang are caught even when nothing is
// queued (kube-proxy misses those). Until the first sync after the loop
// started has succeeded, neither rule applies: the first sync may go up
// to StartupTimeoutFactor health timeouts without progress (a cold start),
// and changes queued meanwhile wait for it anyway. As in kube-proxy, a family is only
// judged after its first Updated call, so the sync loop should call Updated
// once when it starts (kube-proxy does so in SyncLoop).
//
// /healthz, which load balancers read, also fails once the API server has
// not been reached for apiTimeout (SetAPIServerTimeout, APIServerReached):
// the node's Services are then stale. /livez never does, so an API outage
// does not make the kubelet restart every proxy at once.
type ProxyHealthServer struct {
	addr          string
	healthTimeout time.Duration
	node          func() *v1.Node
	clock         clock.PassiveClock

	mu          sync.RWMutex
	lastUpdated map[v1.IPFamily]time.Time
	// oldestQueued is when the oldest change not yet synced was queued.
	oldestQueued map[v1.IPFamily]time.Time
	// loopRunning turns on the stall rule, once synced (the first sync
	// since loopStart succeeded).
	loopRunning bool
	loopStart   time.Time
	// progress is the last time the first sync reported progress.
	progress time.Time
	synced   map[v1.IPFamily]bool
	// apiTimeout > 0 turns on the API server rule of /healthz; apiContact
	// is the last time the API server answered.
	apiTimeout time.Duration
	apiContact time.Time
}

// NewProxyHealthServer returns a server for addr ("IP:port"). healthTimeout
// is kube-proxy's 2x the sync period. node returns the current Node object,
// or nil while it is unknown; it must be safe for concurrent use. A nil node
// func means the Node is never known, so /healthz always reports 503.
func NewProxyHealthServer(addr string, healthTimeout time.Duration, node func() *v1.Node) *ProxyHealthServer {
	return newProxyHealthServer(addr, healthTimeout, node, clock.RealClock{})
}

func newProxyHealthServer(addr string, healthTimeout time.Duration, node func() *v1.Node, c clock.PassiveClock) *ProxyHealthServer {
	return &ProxyHealthServer{
		addr:          addr,
		healthTimeout: healthTimeout,
		node:          node,
		clock:         c,
		lastUpdated:   make(map[v1.IPFamily]time.Time),
		oldestQueued:  make(map[v1.IPFamily]time.Time),
		synced:        make(map[v1.IPFamily]bool),
	}
}

// Updated records that family's proxier finished a sync and has nothing
// queued any more.
func (hs *ProxyHealthServer) Updated(family v1.IPFamily) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	delete(hs.oldestQueued, family)
	hs.lastUpdated[family] = hs.clock.Now()
	if hs.loopRunning {
		hs.synced[family] = true
	}
}

// SyncLoopRunning tells the server that the caches have synced and the
// sync loop runs: from now on a family whose last successful sync is
// healthTimeout old is unhealthy. Before, the first sync waits for the
// API server, and an outage then must not make the kubelet restart the
// proxy over and over.
func (hs *ProxyHealthServer) SyncLoopRunning() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.loopRunning = true
	now := hs.clock.Now()
	hs.loopStart = now
	for f := range hs.lastUpdated {
		hs.lastUpdated[f] = now
	}
}

// Progress records that a sync made progress (for the first sync's
// startup rule).
func (hs *ProxyHealthServer) Progress() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.progress = hs.clock.Now()
}

// SetAPIServerTimeout makes /healthz fail once the API server has not
// answered for d (0: never). The clock starts now.
func (hs *ProxyHealthServer) SetAPIServerTimeout(d time.Duration) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.apiTimeout, hs.apiContact = d, hs.clock.Now()
}

// APIServerReached records that the API server answered.
func (hs *ProxyHealthServer) APIServerReached() {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.apiContact = hs.clock.Now()
}

// APIServerReachable reports whether the API server answered within the
// timeout, and whether that check is on at all.
func (hs *ProxyHealthServer) APIServerReachable() (reachable, checked bool) {
	hs.mu.RLock()
	defer hs.mu.RUnlock()
	if hs.apiTimeout <= 0 {
		return true, false
	}
	return hs.clock.Now().Sub(hs.apiContact) < hs.apiTimeout, true
}

// QueuedUpdate records that family's proxier has a change to sync. Only
// the first call since the last Updated counts: health measures how long
// the oldest pending change has waited.
func (hs *ProxyHealthServer) QueuedUpdate(family v1.IPFamily) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if _, pending := hs.oldestQueued[family]; !pending {
		hs.oldestQueued[family] = hs.clock.Now()
	}
}

// Health returns the sync health, without node eligibility.
func (hs *ProxyHealthServer) Health() ProxyHealth {
	hs.mu.RLock()
	defer hs.mu.RUnlock()

	now := hs.clock.Now()
	health := ProxyHealth{
		CurrentTime: now,
		Healthy:     true,
		Status:      make(map[v1.IPFamily]ProxierHealth, len(hs.lastUpdated)),
	}
	for family, last := range hs.lastUpdated {
		if last.After(health.LastUpdated) {
			health.LastUpdated = last
		}
		healthy := true
		switch {
		case hs.loopRunning && !hs.synced[family]:
			// The first sync: bounded, but by the startup timeout
			// since its last progress.
			since := hs.loopStart
			if hs.progress.After(since) {
				since = hs.progress
			}
			if now.Sub(since) >= StartupTimeoutFactor*hs.healthTimeout {
				healthy = false
			}
		default:
			if queued, pending := hs.oldestQueued[family]; pending && now.Sub(queued) >= hs.healthTimeout {
				healthy = false
			}
			// Syncs that fail or hang: no success for healthTimeout.
			if hs.loopRunning && now.Sub(last) >= hs.healthTimeout {
				healthy = false
			}
		}
		if !healthy {
			health.Healthy = false
		}
		health.Status[family] = ProxierHealth{LastUpdated: last, Healthy: healthy}
	}
	return health
}

// NodeEligible reports whether this node should receive traffic: its Node
// object is known, not being deleted and not tainted ToBeDeletedTaint.
func (hs *ProxyHealthServer) NodeEligible() bool {
	if hs.node == nil {
		return false
	}
	node := hs.node()
	if node == nil {
		return false
	}
	if !node.DeletionTimestamp.IsZero() {
		return false
	}
	for _, taint := range node.Spec.Taints {
		if taint.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}

// Handler returns the /healthz and /livez handler.
func (hs *ProxyHealthServer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", hs.serveHealthz)
	mux.HandleFunc("/livez", hs.serveLivez)
	return mux
}

// Run serves on the server's address until ctx is done. It returns an
// error if the address cannot be bound or serving fails; the caller decides
// whether to retry (kube-proxy retries every 5s).
func (hs *ProxyHealthServer) Run(ctx context.Context) error {
	ln, err := metrics.Listen(ctx, hs.addr)
	if err != nil {
		return fmt.Errorf("proxy healthz: %w", err)
	}
	return hs.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done; it closes ln.
func (hs *ProxyHealthServer) Serve(ctx context.Context, ln net.Listener) error {
	klog.FromContext(ctx).V(3).Info("Starting healthz HTTP server", "address", ln.Addr().String())
	if err := metrics.ServeListener(ctx, ln, hs.Handler()); err != nil {
		return fmt.Errorf("proxy healthz: %w", err)
	}
	return nil
}

// serveHealthz is /healthz: sync health and node eligibility. Load
// balancers use it to pick nodes.
func (hs *ProxyHealthServer) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	health := hs.Health()
	eligible := hs.NodeEligible()
	health.NodeEligible = &eligible
	api, checked := hs.APIServerReachable()
	if checked {
		health.APIServerReachable = &api
	}
	hs.write(w, health, health.Healthy && eligible && api, metrics.ProxyHealthzTotal)
}

// serveLivez is /livez: sync health only, for the liveness probe, so a
// node being drained does not get the proxy restarted.
func (hs *ProxyHealthServer) serveLivez(w http.ResponseWriter, _ *http.Request) {
	health := hs.Health()
	hs.write(w, health, health.Healthy, metrics.ProxyLivezTotal)
}

// write sends health with kube-proxy's headers and counts the status code.
func (hs *ProxyHealthServer) write(w http.ResponseWriter, health ProxyHealth, healthy bool, counter *basemetrics.CounterVec) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if healthy {
		// Old kube-proxy reported the last loop run even when nothing
		// changed; a healthy proxy reports "now" to keep that meaning.
		health.LastUpdated = health.CurrentTime
	}
	body, err := json.Marshal(health)
	if err != nil {
		// Cannot happen for this type; answer 500 rather than a bogus body.
		http.Error(w, fmt.Sprintf("encoding health: %v", err), http.StatusInternalServerError)
		return
	}
	if healthy {
		counter.WithLabelValues(metrics.CodeOK).Inc()
		w.WriteHeader(http.StatusOK)
	} else {
		counter.WithLabelValues(metrics.CodeServiceUnavailable).Inc()
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write(body) // the client may have gone; nothing to do then
}
