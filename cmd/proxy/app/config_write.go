package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeproxyconfig "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// Writing the effective configuration (--write-config-to).

// flagOnly are options without a KubeProxyConfiguration field: a written
// file leaves them out, so they stay on the command line.
func (o *Options) flagOnly() []string {
	var out []string
	if o.Master != "" {
		out = append(out, "--master")
	}
	if o.GracefulTerminationTimeout != DefaultGracefulTerminationTimeout {
		out = append(out, "--ipvs-graceful-termination-timeout")
	}
	if o.ExternalLocalFallback {
		out = append(out, "--external-traffic-local-fallback")
	}
	if o.HealthzAPIServerTimeout != DefaultHealthzAPIServerTimeout {
		out = append(out, "--healthz-api-server-timeout")
	}
	if len(o.Guard.ExternalIPAllowedCIDRs) > 0 {
		out = append(out, "--external-ip-allowed-cidrs")
	}
	if len(o.Guard.ServiceCIDRs) > 0 {
		out = append(out, "--service-cidr")
	}
	if o.Cleanup {
		out = append(out, "--cleanup")
	}
	return out
}

// Config returns the effective configuration as a KubeProxyConfiguration.
// A disabled health or metrics server (empty address) cannot be written:
// an empty address in the file means the default.
func (o *Options) Config() (*kubeproxyconfig.KubeProxyConfiguration, error) {
	var errs []error
	if o.HealthzBindAddress == "" {
		errs = append(errs, errors.New("--healthz-bind-address is empty (server disabled), which a configuration file cannot express (an empty healthzBindAddress means the default); give --healthz-bind-address= on the command line next to --config instead"))
	}
	if o.MetricsBindAddress == "" {
		errs = append(errs, errors.New("--metrics-bind-address is empty (server disabled), which a configuration file cannot express (an empty metricsBindAddress means the default); give --metrics-bind-address= on the command line next to --config instead"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	d := func(t time.Duration) metav1.Duration { return metav1.Duration{Duration: t} }
	c := &kubeproxyconfig.KubeProxyConfiguration{
		TypeMeta:           metav1.TypeMeta{APIVersion: ConfigAPIVersion, Kind: ConfigKind},
		Mode:               ProxyModeIPVS,
		FeatureGates:       o.FeatureGates,
		HostnameOverride:   o.HostnameOverride,
		HealthzBindAddress: o.HealthzBindAddress,
		MetricsBindAddress: o.MetricsBindAddress,
		EnableProfiling:    o.EnableProfiling,
		ClusterCIDR:        strings.Join(o.ClusterCIDRs, ","),
		NodePortAddresses:  o.NodePortAddresses,
		DetectLocalMode:    kubeproxyconfig.LocalMode(o.DetectLocalMode),
		DetectLocal: kubeproxyconfig.DetectLocalConfiguration{
			BridgeInterface:     o.PodBridgeInterface,
			InterfaceNamePrefix: o.PodInterfaceNamePrefix,
		},
		IPTables: kubeproxyconfig.KubeProxyIPTablesConfiguration{MasqueradeAll: o.MasqueradeAll},
		IPVS: kubeproxyconfig.KubeProxyIPVSConfiguration{
			Scheduler:     o.IPVSScheduler,
			SyncPeriod:    d(o.IPVSSyncPeriod),
			MinSyncPeriod: d(o.IPVSMinSyncPeriod),
			StrictARP:     o.IPVSStrictARP,
			ExcludeCIDRs:  o.IPVSExcludeCIDRs,
			TCPTimeout:    d(o.IPVSTCPTimeout),
			TCPFinTimeout: d(o.IPVSTCPFinTimeout),
			UDPTimeout:    d(o.IPVSUDPTimeout),
		},
	}
	c.Conntrack = kubeproxyconfig.KubeProxyConntrackConfiguration{
		MaxPerCore:            ptr.To(o.Conntrack.MaxPerCore),
		Min:                   ptr.To(o.Conntrack.Min),
		TCPEstablishedTimeout: ptr.To(d(o.Conntrack.TCPEstablishedTimeout)),
		TCPCloseWaitTimeout:   ptr.To(d(o.Conntrack.TCPCloseWaitTimeout)),
		TCPBeLiberal:          o.Conntrack.TCPBeLiberal,
		UDPTimeout:            d(o.Conntrack.UDPTimeout),
		UDPStreamTimeout:      d(o.Conntrack.UDPStreamTimeout),
	}
	c.ClientConnection.Kubeconfig = o.Kubeconfig
	c.ClientConnection.QPS = o.KubeAPIQPS
	c.ClientConnection.Burst = o.KubeAPIBurst
	c.ClientConnection.ContentType = o.KubeAPIContentType
	if o.Logging != nil {
		c.Logging = *o.Logging
	}
	return c, nil
}

// EncodeConfig writes c as YAML with the supported fields only.
func EncodeConfig(c *kubeproxyconfig.KubeProxyConfiguration) ([]byte, error) {
	js, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	for _, p := range unsupportedPaths() {
		deletePath(m, strings.Split(p, "."))
	}
	return yaml.Marshal(m)
}

// deletePath removes the key at path from m, and the sections it leaves
// empty.
func deletePath(m map[string]any, path []string) {
	if len(path) == 1 {
		delete(m, path[0])
		return
	}
	sub, ok := m[path[0]].(map[string]any)
	if !ok {
		return
	}
	deletePath(sub, path[1:])
	if len(sub) == 0 {
		delete(m, path[0])
	}
}

// WriteConfigFile writes the effective configuration to o.WriteConfigTo.
// It returns the flag-only options that are set, which the file cannot
// carry.
func (o *Options) WriteConfigFile() ([]string, error) {
	c, err := o.Config()
	if err != nil {
		return nil, fmt.Errorf("--write-config-to: %w", err)
	}
	data, err := EncodeConfig(c)
	if err != nil {
		return nil, fmt.Errorf("--write-config-to: encoding: %w", err)
	}
	if err := os.WriteFile(o.WriteConfigTo, data, 0o644); err != nil {
		return nil, fmt.Errorf("--write-config-to: %w", err)
	}
	return o.flagOnly(), nil
}
