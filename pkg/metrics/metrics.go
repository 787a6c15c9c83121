// Package metrics holds the proxy's Prometheus metrics and the HTTP server
// that exposes them.
//
// The kubeproxy_* metrics keep kube-proxy's names, types, buckets and label
// sets (v1.37) so existing dashboards and alerts keep working when this
// proxy replaces kube-proxy. Metrics of our own use the kubeipvsproxy_
// prefix. ip_family label values are "IPv4" and "IPv6" (v1.IPFamily), as
// upstream.
package metrics

import (
	"sync"
	"time"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

const (
	kubeProxySubsystem = "kubeproxy"
	ownNamespace       = "kubeipvsproxy"
)

// Values of the subsystem label of our own metrics.
const (
	SubsystemIPVS     = "ipvs"
	SubsystemIPSet    = "ipset"
	SubsystemIPTables = "iptables"
	SubsystemAddress  = "address" // service addresses on the dummy interface
	SubsystemRoute    = "route"
)

// Values of the op label of NetlinkOperationsTotal.
const (
	OpAdd    = "add"
	OpUpdate = "update"
	OpDelete = "delete"
	OpList   = "list"
	OpFlush  = "flush"
)

// Label values of ProxyHealthzTotal and ProxyLivezTotal, as upstream.
const (
	CodeOK                 = "200"
	CodeServiceUnavailable = "503"
)

var (
	// SyncProxyRulesLatency is the latency of one sync, full or partial.
	SyncProxyRulesLatency = metrics.NewHistogramVec(
		&metrics.HistogramOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "sync_proxy_rules_duration_seconds",
			Help:           "SyncProxyRules latency in seconds",
			Buckets:        metrics.ExponentialBuckets(0.001, 2, 15),
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// SyncFullProxyRulesLatency is the latency of one full sync.
	SyncFullProxyRulesLatency = metrics.NewHistogramVec(
		&metrics.HistogramOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "sync_full_proxy_rules_duration_seconds",
			Help:           "SyncProxyRules latency in seconds for full resyncs",
			Buckets:        metrics.ExponentialBuckets(0.001, 2, 15),
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// SyncPartialProxyRulesLatency is the latency of one partial sync.
	SyncPartialProxyRulesLatency = metrics.NewHistogramVec(
		&metrics.HistogramOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "sync_partial_proxy_rules_duration_seconds",
			Help:           "SyncProxyRules latency in seconds for partial resyncs",
			Buckets:        metrics.ExponentialBuckets(0.001, 2, 15),
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// SyncProxyRulesLastTimestamp is when rules were last synced successfully.
	SyncProxyRulesLastTimestamp = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "sync_proxy_rules_last_timestamp_seconds",
			Help:           "The last time proxy rules were successfully synced",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// NetworkProgrammingLatency is the time from a Service/EndpointSlice
	// change (the EndpointSlice's last-change-trigger-time annotation) to the
	// sync that programmed it. It depends on the control plane's clock, so
	// clock skew skews it.
	NetworkProgrammingLatency = metrics.NewHistogramVec(
		&metrics.HistogramOpts{
			Subsystem: kubeProxySubsystem,
			Name:      "network_programming_duration_seconds",
			Help:      "In Cluster Network Programming Latency in seconds",
			Buckets: metrics.MergeBuckets(
				metrics.LinearBuckets(0.25, 0.25, 2), // 0.25s, 0.50s
				metrics.LinearBuckets(1, 1, 59),      // 1s, 2s, 3s, ... 59s
				metrics.LinearBuckets(60, 5, 12),     // 60s, 65s, 70s, ... 115s
				metrics.LinearBuckets(120, 30, 7),    // 2min, 2.5min, 3min, ..., 5min
			),
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// EndpointChangesPending is the number of EndpointSlice changes not yet synced.
	EndpointChangesPending = metrics.NewGauge(
		&metrics.GaugeOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "sync_proxy_rules_endpoint_changes_pending",
			Help:           "Pending proxy rules Endpoint changes",
			StabilityLevel: metrics.ALPHA,
		},
	)

	// EndpointChangesTotal is the number of EndpointSlice changes seen.
	EndpointChangesTotal = metrics.NewCounter(
		&metrics.CounterOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "sync_proxy_rules_endpoint_changes_total",
			Help:           "Cumulative proxy rules Endpoint changes",
			StabilityLevel: metrics.ALPHA,
		},
	)

	// ServiceChangesPending is the number of Service changes not yet synced.
	ServiceChangesPending = metrics.NewGauge(
		&metrics.GaugeOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "sync_proxy_rules_service_changes_pending",
			Help:           "Pending proxy rules Service changes",
			StabilityLevel: metrics.ALPHA,
		},
	)

	// ServiceChangesTotal is the number of Service changes seen.
	ServiceChangesTotal = metrics.NewCounter(
		&metrics.CounterOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "sync_proxy_rules_service_changes_total",
			Help:           "Cumulative proxy rules Service changes",
			StabilityLevel: metrics.ALPHA,
		},
	)

	// SyncProxyRulesLastQueuedTimestamp is when a sync was last requested; far
	// ahead of SyncProxyRulesLastTimestamp means the sync loop is stuck.
	SyncProxyRulesLastQueuedTimestamp = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "sync_proxy_rules_last_queued_timestamp_seconds",
			Help:           "The last time a sync of proxy rules was queued",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"ip_family"},
	)

	// ProxyHealthzTotal counts /healthz responses by HTTP status code.
	ProxyHealthzTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "proxy_healthz_total",
			Help:           "Cumulative proxy healthz HTTP status",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"code"},
	)

	// ProxyLivezTotal counts /livez responses by HTTP status code.
	ProxyLivezTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Subsystem:      kubeProxySubsystem,
			Name:           "proxy_livez_total",
			Help:           "Cumulative proxy livez HTTP status",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"code"},
	)

	// NetlinkOperationsTotal counts kernel write/read operations by
	// subsystem (Subsystem* constants) and op (Op* constants).
	NetlinkOperationsTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Namespace:      ownNamespace,
			Name:           "netlink_operations_total",
			Help:           "Cumulative kernel operations issued by the proxy, by subsystem and operation",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"subsystem", "op"},
	)

	// SyncObjectsChanged is how many kernel objects one sync changed, per
	// subsystem. A steady non-zero value on full resyncs hints at a fight
	// with another agent over the same objects.
	SyncObjectsChanged = metrics.NewHistogramVec(
		&metrics.HistogramOpts{
			Namespace: ownNamespace,
			Name:      "sync_objects_changed",
			Help:      "Number of kernel objects added, updated or deleted by one sync, by subsystem",
			// MergeBuckets prepends a 0 bucket: most periodic syncs change
			// nothing. Then 1, 4, 16, ... 65536.
			Buckets:        metrics.MergeBuckets(metrics.ExponentialBuckets(1, 4, 9)),
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"subsystem"},
	)

	// DriftRepairedTotal counts objects a full resync found changed behind
	// the proxy's back and put right.
	DriftRepairedTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Namespace:      ownNamespace,
			Name:           "drift_repaired_total",
			Help:           "Cumulative kernel objects found changed outside the proxy and repaired, by subsystem",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"subsystem"},
	)

	// ServicesFailed is how many Services the kernel refused to program in
	// part or whole at the last sync (a scheduler it cannot load, an
	// address it refuses, a full ipset). Each also has a Warning Event and
	// a log line; the rest of the node's Services are unaffected.
	ServicesFailed = metrics.NewGauge(
		&metrics.GaugeOpts{
			Namespace:      ownNamespace,
			Name:           "services_failed",
			Help:           "Number of Services the kernel refused to program at the last sync; they are retried with backoff",
			StabilityLevel: metrics.ALPHA,
		},
	)

	// ServicesFailedTotal counts kernel refusals per reason.
	ServicesFailedTotal = metrics.NewCounterVec(
		&metrics.CounterOpts{
			Namespace:      ownNamespace,
			Name:           "service_failures_total",
			Help:           "Cumulative count of Services found refused by the kernel (a new problem with one Service), by reason",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"reason"},
	)

	// NodeProblem is 1 for each problem with this node's own Node object
	// that keeps the proxy from serving NodePorts or local endpoints (no
	// Node object by that name, no addresses), 0 once it is gone.
	NodeProblem = metrics.NewGaugeVec(
		&metrics.GaugeOpts{
			Namespace:      ownNamespace,
			Name:           "node_problem",
			Help:           "1 while the proxy's own Node object has the problem named by reason (NodeNotFound, NodeWithoutAddresses), else 0",
			StabilityLevel: metrics.ALPHA,
		},
		[]string{"reason"},
	)
)

// all lists every collector Register registers.
var all = []metrics.Registerable{
	SyncProxyRulesLatency,
	SyncFullProxyRulesLatency,
	SyncPartialProxyRulesLatency,
	SyncProxyRulesLastTimestamp,
	NetworkProgrammingLatency,
	EndpointChangesPending,
	EndpointChangesTotal,
	ServiceChangesPending,
	ServiceChangesTotal,
	SyncProxyRulesLastQueuedTimestamp,
	ProxyHealthzTotal,
	ProxyLivezTotal,
	NetlinkOperationsTotal,
	SyncObjectsChanged,
	DriftRepairedTotal,
	ServicesFailed,
	ServicesFailedTotal,
	NodeProblem,
}

var registerOnce sync.Once

// Register registers all metrics with legacyregistry. It is safe to call
// more than once. Until it is called the metrics are no-ops, as with every
// component-base metric.
func Register() {
	registerOnce.Do(func() {
		for _, m := range all {
			legacyregistry.MustRegister(m)
		}
	})
}

// SinceInSeconds returns the time since start in seconds, for observing
// latencies.
func SinceInSeconds(start time.Time) float64 {
	return time.Since(start).Seconds()
}
