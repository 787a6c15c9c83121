// Package app holds kube-ipvs-proxy's command line: options with
// kube-proxy's flag names, their validation, the cobra command, and the
// helpers that turn options into a client config, a node name and NodePort
// addresses. The sync wiring lives elsewhere and is passed in as the run
// function of NewCommand.
package app

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"
)

// Defaults, as kube-proxy's.
const (
	DefaultHealthzPort        = 10256
	DefaultMetricsPort        = 10249
	DefaultHealthzBindAddress = "0.0.0.0:10256"
	DefaultMetricsBindAddress = "127.0.0.1:10249"
	DefaultIPVSScheduler      = "rr"
	DefaultIPVSSyncPeriod     = 30 * time.Second
	// DefaultGracefulTerminationTimeout bounds draining (upstream: unbounded).
	DefaultGracefulTerminationTimeout = 60 * time.Second
	// DefaultHealthzAPIServerTimeout: the API server check of /healthz is
	// off (kube-proxy has no such check). Load balancers probe /healthz on
	// every node: failing it during a control-plane outage would drop all
	// ingress at once while the data plane still works.
	DefaultHealthzAPIServerTimeout = time.Duration(0)
	// DefaultIPVSMinSyncPeriod is what an --ipvs-min-sync-period of 0 means:
	// kube-proxy's own default for the flag.
	DefaultIPVSMinSyncPeriod = time.Second

	ContentTypeProtobuf = "application/vnd.kubernetes.protobuf"
	ContentTypeJSON     = "application/json"
	DefaultKubeAPIQPS   = 5
	DefaultKubeAPIBurst = 10
)

// Options are the proxy's command line options. Field comments name the
// flag; flags keep kube-proxy's names so existing manifests work.
type Options struct {
	Kubeconfig       string // --kubeconfig
	Master           string // --master, overrides the kubeconfig's server
	HostnameOverride string // --hostname-override

	// ClusterCIDRs is --cluster-cidr: pod CIDRs, at most one per family,
	// comma-separated. Traffic from them counts as cluster-local.
	ClusterCIDRs  []string
	MasqueradeAll bool // --masquerade-all

	// IPVSScheduler is --ipvs-scheduler; "" means rr, as kube-proxy (see
	// Scheduler).
	IPVSScheduler  string
	IPVSSyncPeriod time.Duration // --ipvs-sync-period
	// IPVSMinSyncPeriod is --ipvs-min-sync-period. 0, the default, means
	// DefaultIPVSMinSyncPeriod (1s, kube-proxy's default); see
	// EffectiveMinSyncPeriod.
	IPVSMinSyncPeriod time.Duration
	IPVSStrictARP     bool // --ipvs-strict-arp
	// IPVSExcludeCIDRs is --ipvs-exclude-cidrs: virtual servers on these
	// addresses are never planned, changed nor deleted.
	IPVSExcludeCIDRs []string
	// IPVS connection timeouts (--ipvs-tcp-timeout, --ipvs-tcpfin-timeout,
	// --ipvs-udp-timeout); 0 leaves the kernel's value.
	IPVSTCPTimeout    time.Duration
	IPVSTCPFinTimeout time.Duration
	IPVSUDPTimeout    time.Duration
	// GracefulTerminationTimeout bounds how long a removed TCP real server
	// drains at weight 0 before it is deleted (upstream has no bound).
	GracefulTerminationTimeout time.Duration
	// Conntrack holds the --conntrack-* flags: the conntrack table size and
	// timeouts, set at start as kube-proxy does.
	Conntrack ConntrackOptions
	// Guard holds --external-ip-allowed-cidrs and --service-cidr (ours, not kube-proxy's).
	Guard GuardOptions

	// ExternalLocalFallback: with externalTrafficPolicy Local and no local
	// endpoint, use the cluster's endpoints (upstream IPVS mode) instead of
	// refusing (upstream iptables/nftables modes, our default).
	ExternalLocalFallback bool
	// DetectLocalMode is --detect-local-mode: how traffic from local pods
	// is told apart (ClusterCIDR, NodeCIDR, BridgeInterface,
	// InterfaceNamePrefix), with --pod-bridge-interface and
	// --pod-interface-name-prefix.
	DetectLocalMode        string
	PodBridgeInterface     string
	PodInterfaceNamePrefix string

	// NodePortAddresses is --nodeport-addresses: CIDRs and the keywords
	// "primary", "all" and "localhost", as kube-proxy. Empty means all of
	// the node's addresses.
	NodePortAddresses []string

	// HealthzBindAddress and MetricsBindAddress are "IP:port"; empty
	// disables the server. A bare IP gets the default port.
	HealthzBindAddress string // --healthz-bind-address
	// HealthzAPIServerTimeout is --healthz-api-server-timeout: /healthz
	// fails once the API server has not answered for this long (0: never).
	HealthzAPIServerTimeout time.Duration
	MetricsBindAddress      string // --metrics-bind-address
	EnableProfiling         bool   // --enable-profiling (alias --profiling)

	KubeAPIQPS         float32 // --kube-api-qps
	KubeAPIBurst       int32   // --kube-api-burst
	KubeAPIContentType string  // --kube-api-content-type

	// Cleanup is --cleanup: remove the proxy's kernel state and exit.
	Cleanup bool

	// Logging holds -v, --vmodule, --logging-format and friends.
	Logging *logsapi.LoggingConfiguration

	// FeatureGates is --feature-gates (and the configuration file's
	// featureGates); see FeatureGate.
	FeatureGates map[string]bool

	// ConfigFile is --config: a KubeProxyConfiguration file (see
	// LoadConfigFile); flags given on the command line override it.
	ConfigFile string
	// WriteConfigTo is --write-config-to: write the effective
	// configuration there and exit.
	WriteConfigTo string
}

// NewOptions returns Options with kube-proxy's defaults.
func NewOptions() *Options {
	return &Options{
		IPVSScheduler:              DefaultIPVSScheduler,
		IPVSSyncPeriod:             DefaultIPVSSyncPeriod,
		GracefulTerminationTimeout: DefaultGracefulTerminationTimeout,
		Conntrack:                  DefaultConntrackOptions(),
		HealthzBindAddress:         DefaultHealthzBindAddress,
		HealthzAPIServerTimeout:    DefaultHealthzAPIServerTimeout,
		MetricsBindAddress:         DefaultMetricsBindAddress,
		KubeAPIQPS:                 DefaultKubeAPIQPS,
		KubeAPIBurst:               DefaultKubeAPIBurst,
		KubeAPIContentType:         ContentTypeProtobuf,
		Logging:                    logsapi.NewLoggingConfiguration(),
	}
}

// AddFlags registers the options on fs.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	if o.Logging == nil {
		o.Logging = logsapi.NewLoggingConfiguration()
	}
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig,
		"Path to kubeconfig file with authorization information (the master location can be overridden by the master flag). If neither this nor --master is set, the in-cluster config is used.")
	fs.StringVar(&o.Master, "master", o.Master,
		"The address of the Kubernetes API server (overrides any value in kubeconfig)")
	fs.StringVar(&o.HostnameOverride, "hostname-override", o.HostnameOverride,
		"If non-empty, will be used as the name of the Node that the proxy is running on. If unset, the NODE_NAME environment variable is used, then the node's hostname.")

	fs.StringSliceVar(&o.ClusterCIDRs, "cluster-cidr", o.ClusterCIDRs,
		"The CIDR range of the pods in the cluster. (For dual-stack clusters, this can be a comma-separated dual-stack pair of CIDR ranges.)")
	fs.BoolVar(&o.MasqueradeAll, "masquerade-all", o.MasqueradeAll,
		"SNAT all traffic sent via Service cluster IPs. This may be required with some CNI plugins.")

	fs.StringVar(&o.IPVSScheduler, "ipvs-scheduler", o.IPVSScheduler,
		"The IPVS scheduler: one of "+schedulerList()+".")
	fs.DurationVar(&o.IPVSSyncPeriod, "ipvs-sync-period", o.IPVSSyncPeriod,
		"An interval (e.g. '5s', '1m', '2h22m') indicating how frequently various re-synchronizing and cleanup operations are performed. Must be greater than 0.")
	fs.DurationVar(&o.IPVSMinSyncPeriod, "ipvs-min-sync-period", o.IPVSMinSyncPeriod,
		"The minimum period between IPVS rule resyncs (e.g. '5s', '1m', '2h22m'). 0 means 1s, kube-proxy's default (capped at --ipvs-sync-period).")
	fs.BoolVar(&o.IPVSStrictARP, "ipvs-strict-arp", o.IPVSStrictARP,
		"Enable strict ARP by setting arp_ignore to 1 and arp_announce to 2")

	fs.StringSliceVar(&o.IPVSExcludeCIDRs, "ipvs-exclude-cidrs", o.IPVSExcludeCIDRs,
		"A comma-separated list of CIDRs which the proxy must not touch when managing IPVS virtual servers.")
	fs.DurationVar(&o.IPVSTCPTimeout, "ipvs-tcp-timeout", o.IPVSTCPTimeout,
		"The timeout for idle IPVS TCP connections, 0 to leave as is (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&o.IPVSTCPFinTimeout, "ipvs-tcpfin-timeout", o.IPVSTCPFinTimeout,
		"The timeout for IPVS TCP connections after receiving a FIN packet, 0 to leave as is (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&o.IPVSUDPTimeout, "ipvs-udp-timeout", o.IPVSUDPTimeout,
		"The timeout for IPVS UDP packets, 0 to leave as is (e.g. '5s', '1m', '2h22m').")
	fs.DurationVar(&o.GracefulTerminationTimeout, "ipvs-graceful-termination-timeout", o.GracefulTerminationTimeout,
		"How long a removed TCP real server may drain (weight 0) while it still has connections before it is deleted. 0 deletes at once.")
	fs.BoolVar(&o.ExternalLocalFallback, "external-traffic-local-fallback", o.ExternalLocalFallback,
		"For externalTrafficPolicy: Local Services on a node without a local endpoint, send external traffic to the cluster's endpoints (upstream IPVS mode) instead of refusing it (upstream iptables and nftables modes, the default).")

	o.Conntrack.AddFlags(fs)
	o.Guard.AddFlags(fs)
	fs.DurationVar(&o.HealthzAPIServerTimeout, "healthz-api-server-timeout", o.HealthzAPIServerTimeout,
		"/healthz (read by load balancers) fails once the API server has not answered for this long, as the node's Services are then stale; /livez does not. 0 (the default) turns the check off: an outage of the control plane would otherwise fail every node's /healthz at once, and load balancers would drop all ingress while the data plane works.")

	fs.StringVar(&o.DetectLocalMode, "detect-local-mode", o.DetectLocalMode,
		"Mode to use to detect local traffic: ClusterCIDR (the default), NodeCIDR, BridgeInterface or InterfaceNamePrefix.")
	fs.StringVar(&o.PodBridgeInterface, "pod-bridge-interface", o.PodBridgeInterface,
		"A bridge interface name. When --detect-local-mode is BridgeInterface, traffic from this bridge counts as local.")
	fs.StringVar(&o.PodInterfaceNamePrefix, "pod-interface-name-prefix", o.PodInterfaceNamePrefix,
		"An interface name prefix. When --detect-local-mode is InterfaceNamePrefix, traffic from interfaces with this prefix counts as local.")

	fs.StringSliceVar(&o.NodePortAddresses, "nodeport-addresses", o.NodePortAddresses,
		"A list of CIDR ranges and/or the keywords 'primary' (the Node object's primary IPv4 and/or IPv6 addresses), 'all' (0.0.0.0/0 and ::/0) and 'localhost' (127.0.0.0/8 and ::1/128). NodePort services are only accessible on node IPs covered by the list. If unset, all of the node's IPs are used.")

	fs.Var(newIPPortValue(&o.HealthzBindAddress, DefaultHealthzPort), "healthz-bind-address",
		"The IP address and port for the health check server to serve on, defaulting to \"0.0.0.0:10256\". Empty disables it.")
	fs.Var(newIPPortValue(&o.MetricsBindAddress, DefaultMetricsPort), "metrics-bind-address",
		"The IP address and port for the metrics server to serve on, defaulting to \"127.0.0.1:10249\". (Set to \"0.0.0.0:10249\" / \"[::]:10249\" to bind on all interfaces.) Empty disables it.")
	fs.BoolVar(&o.EnableProfiling, "enable-profiling", o.EnableProfiling,
		"If true enables profiling via web interface on /debug/pprof handler of the metrics server.")
	// kube-proxy calls it --profiling; accept both so its manifests work.
	fs.BoolVar(&o.EnableProfiling, "profiling", o.EnableProfiling, "Alias of --enable-profiling.")

	fs.Float32Var(&o.KubeAPIQPS, "kube-api-qps", o.KubeAPIQPS, "QPS to use while talking with kubernetes apiserver")
	fs.Int32Var(&o.KubeAPIBurst, "kube-api-burst", o.KubeAPIBurst, "Burst to use while talking with kubernetes apiserver")
	fs.StringVar(&o.KubeAPIContentType, "kube-api-content-type", o.KubeAPIContentType, "Content type of requests sent to apiserver.")

	fs.BoolVar(&o.Cleanup, "cleanup", o.Cleanup, "If true cleanup IPVS and iptables rules and exit.")

	logsapi.AddFlags(o.Logging, fs)
	o.addFeatureGatesFlag(fs)

	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile,
		"The path to the configuration file: kube-proxy's KubeProxyConfiguration (apiVersion "+ConfigAPIVersion+"), with the fields this proxy supports. Flags given on the command line override it.")
	fs.StringVar(&o.WriteConfigTo, "write-config-to", o.WriteConfigTo,
		"If set, write the effective configuration (as a KubeProxyConfiguration) to this file and exit.")
}

// EffectiveMinSyncPeriod is the minimum interval between syncs: the flag,
// or for 0 kube-proxy's default of 1s, but never above the sync period.
func (o *Options) EffectiveMinSyncPeriod() time.Duration {
	if o.IPVSMinSyncPeriod > 0 {
		return o.IPVSMinSyncPeriod
	}
	return min(DefaultIPVSMinSyncPeriod, o.IPVSSyncPeriod)
}

// Scheduler is the IPVS scheduler to use.
func (o *Options) Scheduler() string {
	if o.IPVSScheduler == "" {
		return DefaultIPVSScheduler
	}
	return o.IPVSScheduler
}

// HealthTimeout is how long a queued change may wait for a sync before the
// health server reports unhealthy: twice the sync period, as kube-proxy.
func (o *Options) HealthTimeout() time.Duration {
	return 2 * o.IPVSSyncPeriod
}

// ipPortValue is a flag holding "IP:port"; a bare IP gets a default port
// and "" disables, like kube-proxy's bind address flags.
type ipPortValue struct {
	val         *string
	defaultPort uint16
}

func newIPPortValue(val *string, defaultPort uint16) *ipPortValue {
	return &ipPortValue{val: val, defaultPort: defaultPort}
}

func (v *ipPortValue) String() string {
	if v.val == nil {
		return ""
	}
	return *v.val
}

func (v *ipPortValue) Set(s string) error {
	norm, err := normalizeIPPort(s, v.defaultPort)
	if err != nil {
		return err
	}
	*v.val = norm
	return nil
}

func (v *ipPortValue) Type() string { return "ipport" }

// normalizeIPPort validates "IP", "IP:port" or "" and returns "IP:port"
// (IPv6 bracketed) or "".
func normalizeIPPort(s string, defaultPort uint16) (string, error) {
	if s == "" {
		return "", nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip.Unmap(), defaultPort).String(), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return "", fmt.Errorf("%q is not IP or IP:port (e.g. 0.0.0.0:%d or [::]:%d)", s, defaultPort, defaultPort)
	}
	if ap.Port() == 0 {
		return "", fmt.Errorf("%q: port must be 1-65535", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String(), nil
}

// scheduler names IPVS knows (ipvsadm(8)); kube-proxy passes the flag
// through unchecked, we fail early instead of at the first sync.
var schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos"}

func schedulerList() string { return strings.Join(schedulers, ", ") }
