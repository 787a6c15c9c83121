package app

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Validate checks the options and returns every problem found, each
// naming its flag.
func (o *Options) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	add(o.Guard.Validate())
	if _, err := o.ClusterCIDRPrefixes(); err != nil {
		add(err)
	}
	if _, err := servicecache.ParseNodePortAddresses(o.NodePortAddresses); err != nil {
		add(fmt.Errorf("--nodeport-addresses: %w", err))
	}

	if _, err := o.ExcludeCIDRPrefixes(); err != nil {
		add(err)
	}
	for name, d := range map[string]time.Duration{"--ipvs-tcp-timeout": o.IPVSTCPTimeout, "--ipvs-tcpfin-timeout": o.IPVSTCPFinTimeout,
		"--ipvs-udp-timeout": o.IPVSUDPTimeout, "--ipvs-graceful-termination-timeout": o.GracefulTerminationTimeout,
		"--conntrack-tcp-timeout-established": o.Conntrack.TCPEstablishedTimeout, "--conntrack-tcp-timeout-close-wait": o.Conntrack.TCPCloseWaitTimeout,
		"--conntrack-udp-timeout": o.Conntrack.UDPTimeout, "--conntrack-udp-timeout-stream": o.Conntrack.UDPStreamTimeout,
		"--healthz-api-server-timeout": o.HealthzAPIServerTimeout} {
		if d < 0 {
			add(fmt.Errorf("%s: must be 0 or more, got %s", name, d))
		}
	}

	if o.Conntrack.MaxPerCore < 0 || o.Conntrack.Min < 0 {
		add(fmt.Errorf("--conntrack-max-per-core and --conntrack-min: must be 0 or more, got %d and %d", o.Conntrack.MaxPerCore, o.Conntrack.Min))
	}

	switch o.DetectLocalMode {
	case "", DetectLocalClusterCIDR, DetectLocalNodeCIDR:
	case DetectLocalBridgeInterface:
		if strings.TrimSpace(o.PodBridgeInterface) == "" {
			add(errors.New("--detect-local-mode=BridgeInterface needs --pod-bridge-interface"))
		}
	case DetectLocalInterfaceNamePrefix:
		if strings.TrimSpace(o.PodInterfaceNamePrefix) == "" {
			add(errors.New("--detect-local-mode=InterfaceNamePrefix needs --pod-interface-name-prefix"))
		}
	default:
		add(fmt.Errorf("--detect-local-mode: unknown mode %q, want ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix", o.DetectLocalMode))
	}

	if o.IPVSSyncPeriod <= 0 {
		add(fmt.Errorf("--ipvs-sync-period: must be greater than 0, got %s", o.IPVSSyncPeriod))
	}
	switch {
	case o.IPVSMinSyncPeriod < 0:
		add(fmt.Errorf("--ipvs-min-sync-period: must be 0 or more, got %s", o.IPVSMinSyncPeriod))
	case o.IPVSSyncPeriod > 0 && o.IPVSMinSyncPeriod > o.IPVSSyncPeriod:
		add(fmt.Errorf("--ipvs-min-sync-period (%s) must not exceed --ipvs-sync-period (%s)", o.IPVSMinSyncPeriod, o.IPVSSyncPeriod))
	}

	if o.IPVSScheduler != "" && !slices.Contains(schedulers, o.IPVSScheduler) {
		add(fmt.Errorf("--ipvs-scheduler: unknown scheduler %q, want one of %s", o.IPVSScheduler, schedulerList()))
	}

	// The flags normalize on Set; these catch values assigned in code.
	if _, err := normalizeIPPort(o.HealthzBindAddress, DefaultHealthzPort); err != nil {
		add(fmt.Errorf("--healthz-bind-address: %w", err))
	}
	if _, err := normalizeIPPort(o.MetricsBindAddress, DefaultMetricsPort); err != nil {
		add(fmt.Errorf("--metrics-bind-address: %w", err))
	}

	if o.KubeAPIQPS < 0 {
		add(fmt.Errorf("--kube-api-qps: must be 0 or more, got %v", o.KubeAPIQPS))
	}
	if o.KubeAPIBurst < 0 {
		add(fmt.Errorf("--kube-api-burst: must be 0 or more, got %d", o.KubeAPIBurst))
	}
	if o.KubeAPIContentType != ContentTypeProtobuf && o.KubeAPIContentType != ContentTypeJSON {
		add(fmt.Errorf("--kube-api-content-type: %q, want %q or %q", o.KubeAPIContentType, ContentTypeProtobuf, ContentTypeJSON))
	}

	if o.HostnameOverride != "" && strings.TrimSpace(o.HostnameOverride) == "" {
		add(errors.New("--hostname-override: must not be blank"))
	}
	return errors.Join(errs...)
}

// ClusterCIDRPrefixes parses --cluster-cidr: none, one CIDR, or one of
// each family. Host bits are cleared ("10.0.0.1/8" is 10.0.0.0/8), as
// kube-proxy's sloppy parsing accepts them.
func (o *Options) ClusterCIDRPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range o.ClusterCIDRs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("--cluster-cidr: %q is not a valid CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/56)", s)
		}
		out = append(out, p.Masked())
	}
	switch {
	case len(out) > 2:
		return nil, fmt.Errorf("--cluster-cidr: got %d CIDRs, want one, or a dual-stack pair (one IPv4, one IPv6)", len(out))
	case len(out) == 2 && out[0].Addr().Is4() == out[1].Addr().Is4():
		return nil, fmt.Errorf("--cluster-cidr: %s and %s are the same family, want one IPv4 and one IPv6", out[0], out[1])
	}
	return out, nil
}

// ExcludeCIDRPrefixes parses --ipvs-exclude-cidrs.
func (o *Options) ExcludeCIDRPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range o.IPVSExcludeCIDRs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("--ipvs-exclude-cidrs: %q is not a valid CIDR", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
