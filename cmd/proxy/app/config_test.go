package app

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"sigs.k8s.io/yaml"
)

const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

// fullConfig sets every supported field.
const fullConfig = header + `
mode: ipvs
featureGates:
  ContextualLogging: false
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 50
  burst: 100
  contentType: application/json
logging:
  format: text
  verbosity: 3
  vmodule:
  - filePattern: sync*
    verbosity: 5
hostnameOverride: node-a
bindAddress: 0.0.0.0
bindAddressHardFail: false
healthzBindAddress: 10.0.0.1
metricsBindAddress: 0.0.0.0:9999
enableProfiling: true
clusterCIDR: 10.244.0.0/16, fd00:10:244::/56
iptables:
  masqueradeAll: true
ipvs:
  scheduler: wlc
  syncPeriod: 1m
  minSyncPeriod: 5s
  strictARP: true
  excludeCIDRs: [10.0.0.0/8, 192.168.0.0/16]
  tcpTimeout: 15m
  tcpFinTimeout: 30s
  udpTimeout: 5m
detectLocalMode: BridgeInterface
detectLocal:
  bridgeInterface: cbr0
  interfaceNamePrefix: veth
nodePortAddresses: [primary, 192.168.0.0/16]
`

// parseFlags parses args into fresh Options and returns the flag set too.
func parseFlags(t *testing.T, args ...string) (*Options, *pflag.FlagSet) {
	t.Helper()
	o := NewOptions()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parsing %v: %v", args, err)
	}
	return o, fs
}

// loadConfig writes data to a file and loads it into Options parsed from
// args, as the command does.
func loadConfig(t *testing.T, data string, args ...string) (*Options, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	o, fs := parseFlags(t, append([]string{"--config=" + path}, args...)...)
	_, err := o.LoadConfigFile(fs)
	return o, err
}

// fileView returns a copy of o without what a file does not carry, the
// logging configuration checked apart.
func fileView(o *Options) Options {
	c := *o
	c.ConfigFile, c.WriteConfigTo, c.Logging = "", "", nil
	return c
}

func TestConfigFile(t *testing.T) {
	o, err := loadConfig(t, fullConfig)
	if err != nil {
		t.Fatal(err)
	}
	want := &Options{
		Kubeconfig:                 "/var/lib/kube-proxy/kubeconfig.conf",
		KubeAPIQPS:                 50,
		KubeAPIBurst:               100,
		KubeAPIContentType:         ContentTypeJSON,
		HostnameOverride:           "node-a",
		HealthzBindAddress:         "10.0.0.1:10256",
		MetricsBindAddress:         "0.0.0.0:9999",
		EnableProfiling:            true,
		ClusterCIDRs:               []string{"10.244.0.0/16", "fd00:10:244::/56"},
		MasqueradeAll:              true,
		IPVSScheduler:              "wlc",
		IPVSSyncPeriod:             time.Minute,
		IPVSMinSyncPeriod:          5 * time.Second,
		IPVSStrictARP:              true,
		IPVSExcludeCIDRs:           []string{"10.0.0.0/8", "192.168.0.0/16"},
		IPVSTCPTimeout:             15 * time.Minute,
		IPVSTCPFinTimeout:          30 * time.Second,
		IPVSUDPTimeout:             5 * time.Minute,
		GracefulTerminationTimeout: DefaultGracefulTerminationTimeout,
		HealthzAPIServerTimeout:    DefaultHealthzAPIServerTimeout,
		Conntrack:                  DefaultConntrackOptions(),
		DetectLocalMode:            DetectLocalBridgeInterface,
		PodBridgeInterface:         "cbr0",
		PodInterfaceNamePrefix:     "veth",
		NodePortAddresses:          []string{"primary", "192.168.0.0/16"},
		FeatureGates:               map[string]bool{"ContextualLogging": false},
	}
	if got := fileView(o); !reflect.DeepEqual(got, fileView(want)) {
		t.Errorf("options from the file:\n got %+v\nwant %+v", got, fileView(want))
	}
	l := o.Logging
	if l.Verbosity != 3 || l.Format != "text" || l.FlushFrequency.Duration.Duration != logsapi.LogFlushFreqDefault ||
		!reflect.DeepEqual(l.VModule, logsapi.VModuleConfiguration{{FilePattern: "sync*", Verbosity: 5}}) {
		t.Errorf("logging from the file: %+v", l)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if _, err := o.FeatureGate(); err != nil {
		t.Errorf("FeatureGate: %v", err)
	}
}

// TestConfigFileZeroValues: a file with every field at its zero value (as
// kubeadm writes kube-proxy's ConfigMap) or at kube-proxy's defaults (as
// kube-proxy --write-config-to writes it) gives the default options.
func TestConfigFileZeroValues(t *testing.T) {
	files := map[string]string{
		"only type": header,
		"zero values": header + `
bindAddress: ""
bindAddressHardFail: false
clientConnection: {acceptContentTypes: "", burst: 0, contentType: "", kubeconfig: "", qps: 0}
clusterCIDR: ""
configSyncPeriod: 0s
conntrack: {maxPerCore: null, min: null, tcpBeLiberal: false, tcpCloseWaitTimeout: null, tcpEstablishedTimeout: null, udpStreamTimeout: 0s, udpTimeout: 0s}
detectLocal: {bridgeInterface: "", interfaceNamePrefix: ""}
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables: {localhostNodePorts: null, masqueradeAll: false, masqueradeBit: null, minSyncPeriod: 0s, syncPeriod: 0s}
ipvs: {excludeCIDRs: null, minSyncPeriod: 0s, scheduler: "", strictARP: false, syncPeriod: 0s, tcpFinTimeout: 0s, tcpTimeout: 0s, udpTimeout: 0s}
logging: {flushFrequency: 0, options: {json: {infoBufferSize: "0"}, text: {infoBufferSize: "0"}}, verbosity: 0}
metricsBindAddress: ""
mode: ""
nftables: {masqueradeAll: false, masqueradeBit: null, minSyncPeriod: 0s, syncPeriod: 0s}
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel: {enableDSR: false, forwardHealthCheckVip: false, networkName: "", rootHnsEndpointName: "", sourceVip: ""}
`,
		"kube-proxy defaults": header + `
bindAddress: 0.0.0.0
clientConnection: {contentType: application/vnd.kubernetes.protobuf, qps: 5, burst: 10}
configSyncPeriod: 15m0s
conntrack: {maxPerCore: 32768, min: 131072, tcpCloseWaitTimeout: 1h0m0s, tcpEstablishedTimeout: 24h0m0s}
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
iptables: {localhostNodePorts: true, masqueradeBit: 14, minSyncPeriod: 1s, syncPeriod: 30s}
ipvs: {syncPeriod: 30s}
nftables: {masqueradeBit: 14, minSyncPeriod: 1s, syncPeriod: 30s}
logging: {flushFrequency: 5s, format: text}
oomScoreAdj: -999
featureGates: {}
`,
	}
	for name, data := range files {
		t.Run(name, func(t *testing.T) {
			o, err := loadConfig(t, data)
			if err != nil {
				t.Fatal(err)
			}
			want := NewOptions()
			if got := fileView(o); !reflect.DeepEqual(got, fileView(want)) {
				t.Errorf("options:\n got %+v\nwant %+v", got, fileView(want))
			}
			if o.Logging.Verbosity != 0 || o.Logging.Format != "text" || o.Logging.FlushFrequency.Duration.Duration != logsapi.LogFlushFreqDefault {
				t.Errorf("logging: %+v", o.Logging)
			}
		})
	}
}

func TestConfigFlagsOverrideFile(t *testing.T) {
	o, err := loadConfig(t, fullConfig,
		"--ipvs-scheduler=sh",
		"--cluster-cidr=10.96.0.0/12",
		"--profiling=false", // the alias counts too
		"--ipvs-strict-arp=false",
		"--healthz-bind-address=",
		"--kube-api-qps=7",
		"--feature-gates=ContextualLogging=true,LoggingAlphaOptions=true",
		"-v=6",
		"--vmodule=proxy*=2",
		"--master=https://10.0.0.1:6443",
	)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"scheduler (flag)", o.IPVSScheduler, "sh"},
		{"cluster CIDRs (flag replaces the list)", o.ClusterCIDRs, []string{"10.96.0.0/12"}},
		{"profiling (flag)", o.EnableProfiling, false},
		{"strict ARP (flag)", o.IPVSStrictARP, false},
		{"healthz (flag disables)", o.HealthzBindAddress, ""},
		{"qps (flag)", o.KubeAPIQPS, float32(7)},
		{"feature gates (merged, flag wins)", o.FeatureGates, map[string]bool{"ContextualLogging": true, "LoggingAlphaOptions": true}},
		{"verbosity (flag)", uint32(o.Logging.Verbosity), uint32(6)},
		{"vmodule (flag replaces)", o.Logging.VModule, logsapi.VModuleConfiguration{{FilePattern: "proxy*", Verbosity: 2}}},
		{"master (flag only)", o.Master, "https://10.0.0.1:6443"},
		{"sync period (file)", o.IPVSSyncPeriod, time.Minute},
		{"burst (file)", o.KubeAPIBurst, int32(100)},
		{"metrics (file)", o.MetricsBindAddress, "0.0.0.0:9999"},
		{"masquerade all (file)", o.MasqueradeAll, true},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestConfigFileErrors(t *testing.T) {
	tests := []struct {
		name string
		data string
		args []string
		want []string // each must be in the error
	}{
		{name: "empty", data: "", want: []string{"empty"}},
		{name: "not YAML", data: "a: [b", want: []string{"not valid YAML"}},
		{name: "not an object", data: "- a\n- b\n", want: []string{"KubeProxyConfiguration"}},
		{name: "no apiVersion", data: "kind: KubeProxyConfiguration\n", want: []string{`apiVersion ""`, ConfigAPIVersion}},
		{name: "wrong apiVersion", data: "apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
			want: []string{`"kubeproxy.config.k8s.io/v1beta1"`, ConfigAPIVersion}},
		{name: "wrong kind", data: "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
			want: []string{`kind "KubeletConfiguration"`, `want apiVersion "kubeproxy.config.k8s.io/v1alpha1", kind "KubeProxyConfiguration"`}},
		{name: "unknown field", data: header + "proxyMode: ipvs\n", want: []string{`unknown field "proxyMode"`}},
		{name: "unknown nested field", data: header + "ipvs:\n  schedular: rr\n", want: []string{`unknown field "ipvs.schedular"`}},
		{name: "field names are case-sensitive", data: header + "Mode: ipvs\n", want: []string{`unknown field "Mode"`}},
		{name: "duplicate field", data: header + "mode: ipvs\nmode: ipvs\n", want: []string{`"mode"`}},
		{name: "wrong type", data: header + "ipvs:\n  strictARP: yes please\n", want: []string{"strictARP"}},
		{name: "mode iptables", data: header + "mode: iptables\n", want: []string{`mode: "iptables" is not supported`, "only does IPVS"}},
		{name: "mode nftables", data: header + "mode: nftables\n", want: []string{`mode: "nftables"`}},
		{name: "unsupported masqueradeBit", data: header + "iptables:\n  masqueradeBit: 15\n",
			want: []string{"iptables.masqueradeBit: not supported", "got 15", "default, 14"}},
		{name: "unsupported oomScoreAdj", data: header + "oomScoreAdj: -500\n", want: []string{"oomScoreAdj: not supported"}},
		{name: "unsupported configSyncPeriod", data: header + "configSyncPeriod: 1m\n", want: []string{"configSyncPeriod: not supported", `"1m0s"`}},
		{name: "unsupported portRange", data: header + "portRange: 30000-32767\n", want: []string{"portRange: not supported"}},
		{name: "unsupported showHiddenMetricsForVersion", data: header + "showHiddenMetricsForVersion: \"1.36\"\n", want: []string{"showHiddenMetricsForVersion: not supported"}},
		{name: "unsupported winkernel", data: header + "winkernel:\n  enableDSR: true\n", want: []string{"winkernel.enableDSR: not supported"}},
		{name: "unsupported nftables", data: header + "nftables:\n  syncPeriod: 1m\n", want: []string{"nftables.syncPeriod: not supported"}},
		{name: "unsupported acceptContentTypes", data: header + "clientConnection:\n  acceptContentTypes: application/json\n", want: []string{"clientConnection.acceptContentTypes: not supported"}},
		{name: "bindAddress", data: header + "bindAddress: 10.0.0.5\n", want: []string{`bindAddress: "10.0.0.5" is not supported`}},
		{name: "bindAddressHardFail", data: header + "bindAddressHardFail: true\n", want: []string{"bindAddressHardFail: true is not supported"}},
		{name: "every problem at once", data: header + "mode: kernelspace\nfoo: 1\nportRange: 1-2\n",
			want: []string{`mode: "kernelspace"`, `unknown field "foo"`, "portRange: not supported"}},
		{name: "bad address", data: header + "healthzBindAddress: nowhere\n", want: []string{"healthzBindAddress:", "not IP or IP:port"}},
		{name: "unknown feature gate", data: header + "featureGates:\n  IPVSTurbo: true\n",
			want: []string{"featureGates: unrecognized feature gate: IPVSTurbo", "known gates: AllAlpha"}},
		{name: "unknown feature gate with the flag set too", data: header + "featureGates:\n  IPVSTurbo: true\n", args: []string{"--feature-gates=AllBeta=true"},
			want: []string{"featureGates: unrecognized feature gate: IPVSTurbo"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(t, tc.data, tc.args...)
			if err == nil {
				t.Fatalf("no error, want one containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), "--config ") {
				t.Errorf("error %q does not name --config and the file", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestConfigFileMissing(t *testing.T) {
	o, fs := parseFlags(t, "--config="+filepath.Join(t.TempDir(), "missing.yaml"))
	if _, err := o.LoadConfigFile(fs); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("missing file: error %v, want one naming --config", err)
	}
}

// TestConfigFileIPv6BindAddress: as kube-proxy, bindAddress "::" makes the
// default health and metrics addresses IPv6.
func TestConfigFileIPv6BindAddress(t *testing.T) {
	o, err := loadConfig(t, header+"bindAddress: \"::\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if o.HealthzBindAddress != "[::]:10256" || o.MetricsBindAddress != "[::1]:10249" {
		t.Errorf("bind addresses %q, %q; want [::]:10256, [::1]:10249", o.HealthzBindAddress, o.MetricsBindAddress)
	}
	o, err = loadConfig(t, header+"bindAddress: \"::\"\nmetricsBindAddress: 0.0.0.0:9000\n", "--healthz-bind-address=127.0.0.1:1234")
	if err != nil {
		t.Fatal(err)
	}
	if o.HealthzBindAddress != "127.0.0.1:1234" || o.MetricsBindAddress != "0.0.0.0:9000" {
		t.Errorf("bind addresses %q, %q; want the flag's and the file's", o.HealthzBindAddress, o.MetricsBindAddress)
	}
}

// TestWriteConfigRoundTrip: the file --write-config-to writes gives the
// same options through --config, for defaults and for every supported
// option set.
func TestWriteConfigRoundTrip(t *testing.T) {
	argSets := map[string][]string{
		"defaults": nil,
		"everything": {
			"--kubeconfig=/etc/kubernetes/proxy.conf",
			"--hostname-override=node-a",
			"--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
			"--masquerade-all",
			"--ipvs-scheduler=mh",
			"--ipvs-sync-period=1m",
			"--ipvs-min-sync-period=2s",
			"--ipvs-strict-arp",
			"--ipvs-exclude-cidrs=10.0.0.0/8",
			"--ipvs-tcp-timeout=15m",
			"--ipvs-tcpfin-timeout=30s",
			"--ipvs-udp-timeout=5m",
			"--detect-local-mode=InterfaceNamePrefix",
			"--pod-interface-name-prefix=veth",
			"--pod-bridge-interface=cbr0",
			"--nodeport-addresses=primary,192.168.0.0/16",
			"--healthz-bind-address=[::]:10256",
			"--metrics-bind-address=0.0.0.0:9999",
			"--enable-profiling",
			"--kube-api-qps=20",
			"--kube-api-burst=40",
			"--kube-api-content-type=application/json",
			"--feature-gates=ContextualLogging=false",
			"-v=4",
			"--vmodule=sync*=5",
			"--log-flush-frequency=2s",
		},
	}
	for name, args := range argSets {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "written.yaml")
			want, _ := parseFlags(t, append(args, "--write-config-to="+path)...)
			if flagOnly, err := want.WriteConfigFile(); err != nil || len(flagOnly) > 0 {
				t.Fatalf("WriteConfigFile: %v, flag-only %v", err, flagOnly)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := loadConfig(t, string(data))
			if err != nil {
				t.Fatalf("loading the written file: %v\n%s", err, data)
			}
			if !reflect.DeepEqual(fileView(got), fileView(want)) {
				t.Errorf("round trip:\n got %+v\nwant %+v\nfile:\n%s", fileView(got), fileView(want), data)
			}
			gl, wl := got.Logging, want.Logging
			if gl.Verbosity != wl.Verbosity || gl.Format != wl.Format || gl.FlushFrequency.Duration != wl.FlushFrequency.Duration ||
				!reflect.DeepEqual(gl.VModule, wl.VModule) {
				t.Errorf("logging round trip: got %+v, want %+v", gl, wl)
			}
		})
	}
}

// TestWriteConfigSupportedFieldsOnly: the written file holds the fields
// this proxy reads and nothing else.
func TestWriteConfigSupportedFieldsOnly(t *testing.T) {
	o := NewOptions()
	c, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	data, err := EncodeConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	var top []string
	for k := range m {
		top = append(top, k)
	}
	slices.Sort(top)
	wantTop := []string{"apiVersion", "clientConnection", "clusterCIDR", "conntrack", "detectLocal", "detectLocalMode", "enableProfiling",
		"healthzBindAddress", "hostnameOverride", "iptables", "ipvs", "kind", "logging", "metricsBindAddress", "mode", "nodePortAddresses"}
	if !reflect.DeepEqual(top, wantTop) {
		t.Errorf("top-level fields %v, want %v\n%s", top, wantTop, data)
	}
	if ipt := m["iptables"].(map[string]any); len(ipt) != 1 || ipt["masqueradeAll"] != false {
		t.Errorf("iptables section %v, want masqueradeAll only", ipt)
	}
	if cc := m["clientConnection"].(map[string]any); len(cc) != 4 || cc["acceptContentTypes"] != nil {
		t.Errorf("clientConnection section %v, want kubeconfig, qps, burst, contentType", cc)
	}
	if m["mode"] != "ipvs" || m["apiVersion"] != ConfigAPIVersion || m["kind"] != ConfigKind {
		t.Errorf("type or mode wrong:\n%s", data)
	}
}

func TestWriteConfigErrors(t *testing.T) {
	for _, flag := range []string{"--healthz-bind-address=", "--metrics-bind-address="} {
		o, _ := parseFlags(t, flag, "--write-config-to="+filepath.Join(t.TempDir(), "c.yaml"))
		if _, err := o.WriteConfigFile(); err == nil || !strings.Contains(err.Error(), strings.TrimSuffix(flag, "=")) {
			t.Errorf("%s: error %v, want one naming the flag", flag, err)
		}
	}
	o, _ := parseFlags(t, "--write-config-to="+filepath.Join(t.TempDir(), "no", "such", "dir", "c.yaml"))
	if _, err := o.WriteConfigFile(); err == nil {
		t.Error("unwritable path: no error")
	}
	o, _ = parseFlags(t, "--master=https://x", "--external-traffic-local-fallback", "--ipvs-graceful-termination-timeout=5s",
		"--write-config-to="+filepath.Join(t.TempDir(), "c.yaml"))
	flagOnly, err := o.WriteConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"--master", "--ipvs-graceful-termination-timeout", "--external-traffic-local-fallback"}; !reflect.DeepEqual(flagOnly, want) {
		t.Errorf("flag-only options %v, want %v", flagOnly, want)
	}
}

// TestConfigFieldsTable: every path in the tables exists in
// KubeProxyConfiguration, and every flag they name is registered.
func TestConfigFieldsTable(t *testing.T) {
	all := map[string]bool{}
	var c kpc
	v := reflect.ValueOf(&c).Elem()
	walkFields(v, v, "", func(path string, _, _ reflect.Value) bool {
		all[path] = true
		return true
	})
	_, fs := parseFlags(t)
	for _, f := range configFields {
		if !all[f.path] {
			t.Errorf("configFields: no field %q in KubeProxyConfiguration", f.path)
		}
		for _, flag := range f.flags {
			if fs.Lookup(flag) == nil {
				t.Errorf("configFields: %s names unknown flag --%s", f.path, flag)
			}
		}
	}
	for _, p := range specialFields {
		if !all[p] {
			t.Errorf("specialFields: no field %q in KubeProxyConfiguration", p)
		}
	}
	for _, p := range unsupportedPaths() {
		if !all[p] {
			t.Errorf("unsupportedPaths: no field %q", p)
		}
	}
	if got := unsupportedPaths(); !slices.Contains(got, "iptables.masqueradeBit") || slices.Contains(got, "iptables.masqueradeAll") ||
		slices.Contains(got, "conntrack.tcpBeLiberal") || slices.Contains(got, "ipvs.scheduler") {
		t.Errorf("unsupportedPaths = %v", got)
	}
}

func TestAnnotateConfigErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	data := header + "ipvs:\n  syncPeriod: 10s\n  minSyncPeriod: 20s\n  scheduler: fast\n"
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	o, fs := parseFlags(t, "--config="+path, "--ipvs-tcp-timeout=-1s", "--ipvs-sync-period=15s")
	fromFile, err := o.LoadConfigFile(fs)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ipvs-min-sync-period": "ipvs.minSyncPeriod", "ipvs-scheduler": "ipvs.scheduler"}
	if !reflect.DeepEqual(fromFile, want) {
		t.Errorf("set from the file: %v, want %v", fromFile, want)
	}
	msg := annotateConfigErrors(o.Validate(), path, fromFile).Error()
	for _, w := range []string{
		"ipvs.minSyncPeriod in " + path + ": --ipvs-min-sync-period (20s) must not exceed --ipvs-sync-period (15s)",
		"ipvs.scheduler in " + path + `: --ipvs-scheduler: unknown scheduler "fast"`,
		"--ipvs-tcp-timeout: must be 0 or more", // from a flag: as it was
	} {
		if !strings.Contains(msg, w) {
			t.Errorf("annotated errors %q do not contain %q", msg, w)
		}
	}
	if strings.Contains(msg, "in "+path+": --ipvs-tcp-timeout") {
		t.Errorf("flag error annotated as the file's: %q", msg)
	}
}

func TestFeatureGates(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		enabled map[string]bool
	}{
		{name: "defaults", enabled: map[string]bool{"ContextualLogging": true, "LoggingAlphaOptions": false, "LoggingBetaOptions": true}},
		{name: "set", args: []string{"--feature-gates=ContextualLogging=false,LoggingAlphaOptions=true"},
			enabled: map[string]bool{"ContextualLogging": false, "LoggingAlphaOptions": true}},
		{name: "repeated flag accumulates", args: []string{"--feature-gates=ContextualLogging=false", "--feature-gates=LoggingAlphaOptions=true"},
			enabled: map[string]bool{"ContextualLogging": false, "LoggingAlphaOptions": true}},
		{name: "AllAlpha", args: []string{"--feature-gates=AllAlpha=true"}, enabled: map[string]bool{"LoggingAlphaOptions": true}},
		{name: "unknown gate", args: []string{"--feature-gates=IPVSTurbo=true"},
			wantErr: "--feature-gates: unrecognized feature gate: IPVSTurbo (known gates: AllAlpha, AllBeta, ContextualLogging, LoggingAlphaOptions, LoggingBetaOptions)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := parseFlags(t, tc.args...)
			fg, err := o.FeatureGate()
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range tc.enabled {
				if got := fg.Enabled(featuregate.Feature(name)); got != want {
					t.Errorf("%s enabled = %v, want %v", name, got, want)
				}
			}
		})
	}
	o, fs := parseFlags(t)
	if err := fs.Parse([]string{"--feature-gates=ContextualLogging=maybe"}); err == nil {
		t.Errorf("non-boolean gate value parsed: %v", o.FeatureGates)
	}
}

// The conntrack section maps to the --conntrack-* flags: unset fields keep
// kube-proxy's defaults, 0 leaves the kernel's value, a flag wins.
func TestConfigConntrack(t *testing.T) {
	for _, tt := range []struct {
		name string
		data string
		args []string
		want ConntrackOptions
	}{
		{"unset", header, nil, DefaultConntrackOptions()},
		{"zeros leave the kernel alone", header + "conntrack: {maxPerCore: 0, min: 0, tcpCloseWaitTimeout: 0s, tcpEstablishedTimeout: 0s, udpTimeout: 0s}\n",
			nil, ConntrackOptions{}},
		{"values", header + "conntrack: {maxPerCore: 65536, min: 262144, tcpEstablishedTimeout: 2h, tcpCloseWaitTimeout: 30m, tcpBeLiberal: true, udpTimeout: 45s, udpStreamTimeout: 3m}\n",
			nil, ConntrackOptions{MaxPerCore: 65536, Min: 262144, TCPEstablishedTimeout: 2 * time.Hour, TCPCloseWaitTimeout: 30 * time.Minute,
				TCPBeLiberal: true, UDPTimeout: 45 * time.Second, UDPStreamTimeout: 3 * time.Minute}},
		{"a flag wins", header + "conntrack: {maxPerCore: 65536, tcpEstablishedTimeout: 2h}\n", []string{"--conntrack-max-per-core=0"},
			ConntrackOptions{MaxPerCore: 0, Min: DefaultConntrackOptions().Min, TCPEstablishedTimeout: 2 * time.Hour, TCPCloseWaitTimeout: time.Hour}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o, err := loadConfig(t, tt.data, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			if o.Conntrack != tt.want {
				t.Errorf("conntrack options %+v, want %+v", o.Conntrack, tt.want)
			}
		})
	}
}
