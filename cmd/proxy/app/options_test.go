package app

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
)

func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	o := NewOptions()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	o.AddFlags(fs)
	return o, fs.Parse(args)
}

func TestDefaults(t *testing.T) {
	o, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"scheduler", o.IPVSScheduler, "rr"},
		{"sync period", o.IPVSSyncPeriod, 30 * time.Second},
		{"min sync period", o.IPVSMinSyncPeriod, time.Duration(0)},
		{"effective min sync period", o.EffectiveMinSyncPeriod(), time.Second},
		{"health timeout", o.HealthTimeout(), time.Minute},
		{"healthz", o.HealthzBindAddress, "0.0.0.0:10256"},
		{"metrics", o.MetricsBindAddress, "127.0.0.1:10249"},
		{"profiling", o.EnableProfiling, false},
		{"strict arp", o.IPVSStrictARP, false},
		{"masquerade all", o.MasqueradeAll, false},
		{"cleanup", o.Cleanup, false},
		{"content type", o.KubeAPIContentType, ContentTypeProtobuf},
		{"qps", o.KubeAPIQPS, float32(5)},
		{"burst", o.KubeAPIBurst, int32(10)},
		{"verbosity", uint32(o.Logging.Verbosity), uint32(0)},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("default %s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if err := o.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestFlags(t *testing.T) {
	o, err := parse(t,
		"--kubeconfig=/etc/kubernetes/proxy.conf",
		"--master=https://10.0.0.1:6443",
		"--hostname-override=Node-A",
		"--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
		"--masquerade-all",
		"--ipvs-scheduler=wlc",
		"--ipvs-sync-period=1m",
		"--ipvs_min_sync_period=5s", // kube-proxy's underscore spelling
		"--nodeport-addresses=primary,192.168.0.0/16",
		"--healthz-bind-address=::",
		"--metrics-bind-address=0.0.0.0:9999",
		"--profiling",
		"--ipvs-strict-arp",
		"--cleanup",
		"--ipvs-exclude-cidrs=10.0.0.0/8",
		"--ipvs-tcp-timeout=15m",
		"--ipvs-tcpfin-timeout=30s",
		"--ipvs-udp-timeout=5m",
		"--ipvs-graceful-termination-timeout=2m",
		"--external-traffic-local-fallback",
		"--healthz-api-server-timeout=30s",
		"--conntrack-max-per-core=0",
		"--conntrack-min=1000",
		"--conntrack-tcp-timeout-established=2h",
		"--conntrack-tcp-timeout-close-wait=30m",
		"--conntrack-tcp-be-liberal",
		"--conntrack-udp-timeout=45s",
		"--conntrack-udp-timeout-stream=3m",
		"-v=4",
		"--logging-format=text",
	)
	if err != nil {
		t.Fatal(err)
	}
	want := &Options{
		Kubeconfig:                 "/etc/kubernetes/proxy.conf",
		Master:                     "https://10.0.0.1:6443",
		HostnameOverride:           "Node-A",
		ClusterCIDRs:               []string{"10.244.0.0/16", "fd00:10:244::/56"},
		MasqueradeAll:              true,
		IPVSScheduler:              "wlc",
		IPVSSyncPeriod:             time.Minute,
		IPVSMinSyncPeriod:          5 * time.Second,
		NodePortAddresses:          []string{"primary", "192.168.0.0/16"},
		HealthzBindAddress:         "[::]:10256",
		HealthzAPIServerTimeout:    30 * time.Second,
		MetricsBindAddress:         "0.0.0.0:9999",
		EnableProfiling:            true,
		IPVSStrictARP:              true,
		Cleanup:                    true,
		IPVSExcludeCIDRs:           []string{"10.0.0.0/8"},
		IPVSTCPTimeout:             15 * time.Minute,
		IPVSTCPFinTimeout:          30 * time.Second,
		IPVSUDPTimeout:             5 * time.Minute,
		GracefulTerminationTimeout: 2 * time.Minute,
		ExternalLocalFallback:      true,
		Conntrack: ConntrackOptions{MaxPerCore: 0, Min: 1000, TCPEstablishedTimeout: 2 * time.Hour, TCPCloseWaitTimeout: 30 * time.Minute,
			TCPBeLiberal: true, UDPTimeout: 45 * time.Second, UDPStreamTimeout: 3 * time.Minute},
		KubeAPIQPS:         5,
		KubeAPIBurst:       10,
		KubeAPIContentType: ContentTypeProtobuf,
		Logging:            o.Logging,
	}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("parsed:\n got %+v\nwant %+v", o, want)
	}
	if o.Logging.Verbosity != 4 {
		t.Errorf("-v=4 gave verbosity %d", o.Logging.Verbosity)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestBindAddressFlag(t *testing.T) {
	tests := []struct {
		arg     string
		want    string
		wantErr bool
	}{
		{arg: "127.0.0.1:8080", want: "127.0.0.1:8080"},
		{arg: "10.1.2.3", want: "10.1.2.3:10256"},
		{arg: "::1", want: "[::1]:10256"},
		{arg: "[::]:10256", want: "[::]:10256"},
		{arg: "", want: ""},
		{arg: "localhost:10256", wantErr: true},
		{arg: "1.2.3.4:0", wantErr: true},
		{arg: "1.2.3.4:70000", wantErr: true},
		{arg: ":10256", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.arg, func(t *testing.T) {
			o, err := parse(t, "--healthz-bind-address="+tc.arg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parse error = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && o.HealthzBindAddress != tc.want {
				t.Errorf("HealthzBindAddress = %q, want %q", o.HealthzBindAddress, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Options)
		wantErr []string // substrings; empty means valid
	}{
		{name: "defaults", mod: func(*Options) {}},
		{name: "single-stack cluster cidr", mod: func(o *Options) { o.ClusterCIDRs = []string{"10.244.0.0/16"} }},
		{name: "dual-stack cluster cidr", mod: func(o *Options) { o.ClusterCIDRs = []string{"fd00::/56", "10.244.0.0/16"} }},
		{name: "bad cluster cidr", mod: func(o *Options) { o.ClusterCIDRs = []string{"10.244.0.0/33"} },
			wantErr: []string{`--cluster-cidr: "10.244.0.0/33" is not a valid CIDR`}},
		{name: "cluster cidr without length", mod: func(o *Options) { o.ClusterCIDRs = []string{"10.244.0.0"} },
			wantErr: []string{"--cluster-cidr"}},
		{name: "two ipv4 cluster cidrs", mod: func(o *Options) { o.ClusterCIDRs = []string{"10.0.0.0/8", "192.168.0.0/16"} },
			wantErr: []string{"same family"}},
		{name: "three cluster cidrs", mod: func(o *Options) { o.ClusterCIDRs = []string{"10.0.0.0/8", "fd00::/8", "192.168.0.0/16"} },
			wantErr: []string{"got 3 CIDRs"}},
		{name: "zero sync period", mod: func(o *Options) { o.IPVSSyncPeriod = 0 },
			wantErr: []string{"--ipvs-sync-period: must be greater than 0"}},
		{name: "negative sync period", mod: func(o *Options) { o.IPVSSyncPeriod = -time.Second },
			wantErr: []string{"--ipvs-sync-period: must be greater than 0"}},
		{name: "negative min sync period", mod: func(o *Options) { o.IPVSMinSyncPeriod = -time.Second },
			wantErr: []string{"--ipvs-min-sync-period: must be 0 or more"}},
		{name: "min above period", mod: func(o *Options) { o.IPVSMinSyncPeriod = time.Minute },
			wantErr: []string{"--ipvs-min-sync-period (1m0s) must not exceed --ipvs-sync-period (30s)"}},
		{name: "min equal to period", mod: func(o *Options) { o.IPVSMinSyncPeriod = 30 * time.Second }},
		{name: "negative conntrack table size", mod: func(o *Options) { o.Conntrack.MaxPerCore = -5 },
			wantErr: []string{"--conntrack-max-per-core and --conntrack-min: must be 0 or more"}},
		{name: "negative conntrack timeout", mod: func(o *Options) { o.Conntrack.UDPTimeout = -time.Second },
			wantErr: []string{"--conntrack-udp-timeout: must be 0 or more"}},
		{name: "empty scheduler means rr", mod: func(o *Options) { o.IPVSScheduler = "" }},
		{name: "unknown scheduler", mod: func(o *Options) { o.IPVSScheduler = "roundrobin" },
			wantErr: []string{`--ipvs-scheduler: unknown scheduler "roundrobin"`, "rr, wrr, lc"}},
		{name: "scheduler is case sensitive", mod: func(o *Options) { o.IPVSScheduler = "RR" },
			wantErr: []string{"--ipvs-scheduler"}},
		{name: "nodeport cidr and keyword", mod: func(o *Options) { o.NodePortAddresses = []string{"primary", "10.0.0.0/8"} }},
		{name: "bad nodeport address", mod: func(o *Options) { o.NodePortAddresses = []string{"10.0.0.0"} },
			wantErr: []string{`--nodeport-addresses: "10.0.0.0" must be a valid CIDR`}},
		{name: "duplicate nodeport keyword", mod: func(o *Options) { o.NodePortAddresses = []string{"all", "all"} },
			wantErr: []string{`keyword "all" given twice`}},
		{name: "bad healthz address set in code", mod: func(o *Options) { o.HealthzBindAddress = "host:1" },
			wantErr: []string{"--healthz-bind-address"}},
		{name: "disabled servers", mod: func(o *Options) { o.HealthzBindAddress, o.MetricsBindAddress = "", "" }},
		{name: "bad content type", mod: func(o *Options) { o.KubeAPIContentType = "text/plain" },
			wantErr: []string{"--kube-api-content-type"}},
		{name: "json content type", mod: func(o *Options) { o.KubeAPIContentType = ContentTypeJSON }},
		{name: "negative qps and burst", mod: func(o *Options) { o.KubeAPIQPS, o.KubeAPIBurst = -1, -1 },
			wantErr: []string{"--kube-api-qps", "--kube-api-burst"}},
		{name: "blank hostname override", mod: func(o *Options) { o.HostnameOverride = "  " },
			wantErr: []string{"--hostname-override"}},
		{name: "all errors reported together", mod: func(o *Options) {
			o.IPVSSyncPeriod = 0
			o.IPVSScheduler = "nope"
			o.ClusterCIDRs = []string{"x"}
		}, wantErr: []string{"--ipvs-sync-period", "--ipvs-scheduler", "--cluster-cidr"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOptions()
			tc.mod(o)
			err := o.Validate()
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: no error, want %q", tc.wantErr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestValidateSchedulers(t *testing.T) {
	for _, name := range []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos"} {
		o := NewOptions()
		o.IPVSScheduler = name
		if err := o.Validate(); err != nil {
			t.Errorf("scheduler %q: %v", name, err)
		}
	}
}

func TestClusterCIDRPrefixes(t *testing.T) {
	o := NewOptions()
	o.ClusterCIDRs = []string{" 10.244.1.7/16", "", "fd00:10:244::1/56"}
	got, err := o.ClusterCIDRPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ClusterCIDRPrefixes = %v, want %v", got, want)
	}
}

func TestEffectiveMinSyncPeriod(t *testing.T) {
	tests := []struct {
		period, min, want time.Duration
	}{
		{period: 30 * time.Second, min: 0, want: time.Second},
		{period: 30 * time.Second, min: 100 * time.Millisecond, want: 100 * time.Millisecond},
		{period: 30 * time.Second, min: 10 * time.Second, want: 10 * time.Second},
		{period: 500 * time.Millisecond, min: 0, want: 500 * time.Millisecond},
	}
	for _, tc := range tests {
		o := &Options{IPVSSyncPeriod: tc.period, IPVSMinSyncPeriod: tc.min}
		if got := o.EffectiveMinSyncPeriod(); got != tc.want {
			t.Errorf("period %s min %s: EffectiveMinSyncPeriod = %s, want %s", tc.period, tc.min, got, tc.want)
		}
	}
}

func TestScheduler(t *testing.T) {
	for in, want := range map[string]string{"": "rr", "rr": "rr", "mh": "mh"} {
		if got := (&Options{IPVSScheduler: in}).Scheduler(); got != want {
			t.Errorf("Scheduler(%q) = %q, want %q", in, got, want)
		}
	}
}
