package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	kubeproxyconfig "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// The configuration file (--config) is kube-proxy's KubeProxyConfiguration.
const (
	ConfigAPIVersion = "kubeproxy.config.k8s.io/v1alpha1"
	ConfigKind       = "KubeProxyConfiguration"
	// ProxyModeIPVS is the only mode this proxy has.
	ProxyModeIPVS = "ipvs"
)

// configField is a KubeProxyConfiguration field that sets an option.
type configField struct {
	path  string   // JSON path in the file, e.g. "ipvs.syncPeriod"
	flags []string // the option's flags; one given on the command line wins over the file
	// apply copies the field into o unless it holds its zero value, which
	// means "the default" (kube-proxy defaults zero fields too), and
	// reports whether it did.
	apply func(c *kubeproxyconfig.KubeProxyConfiguration, o *Options) (bool, error)
}

// field is a configField for a comparable value.
func field[T comparable](path, flag string, get func(*kubeproxyconfig.KubeProxyConfiguration) T, set func(*Options, T) error) configField {
	return configField{path: path, flags: []string{flag}, apply: func(c *kubeproxyconfig.KubeProxyConfiguration, o *Options) (bool, error) {
		var zero T
		v := get(c)
		if v == zero {
			return false, nil
		}
		return true, set(o, v)
	}}
}

// listField is a configField for a list; empty means the default.
func listField(path, flag string, get func(*kubeproxyconfig.KubeProxyConfiguration) []string, set func(*Options, []string)) configField {
	return configField{path: path, flags: []string{flag}, apply: func(c *kubeproxyconfig.KubeProxyConfiguration, o *Options) (bool, error) {
		v := get(c)
		if len(v) == 0 {
			return false, nil
		}
		set(o, append([]string(nil), v...))
		return true, nil
	}}
}

// ptrField is a configField for an optional value: unset (nil) means the
// default, and any set value applies, zero included (kube-proxy's conntrack
// fields take 0 as "leave the kernel's value").
func ptrField[T any](path, flag string, get func(*kubeproxyconfig.KubeProxyConfiguration) *T, set func(*Options, T)) configField {
	return configField{path: path, flags: []string{flag}, apply: func(c *kubeproxyconfig.KubeProxyConfiguration, o *Options) (bool, error) {
		v := get(c)
		if v == nil {
			return false, nil
		}
		set(o, *v)
		return true, nil
	}}
}

// withAlias adds another flag name for the same option.
func withAlias(f configField, flag string) configField {
	f.flags = append(f.flags, flag)
	return f
}

type kpc = kubeproxyconfig.KubeProxyConfiguration

// configFields are the fields that map to options one to one. featureGates,
// logging, mode, bindAddress and bindAddressHardFail are handled in
// applyConfig.
var configFields = []configField{
	field("clientConnection.kubeconfig", "kubeconfig",
		func(c *kpc) string { return c.ClientConnection.Kubeconfig },
		func(o *Options, v string) error { o.Kubeconfig = v; return nil }),
	field("clientConnection.qps", "kube-api-qps",
		func(c *kpc) float32 { return c.ClientConnection.QPS },
		func(o *Options, v float32) error { o.KubeAPIQPS = v; return nil }),
	field("clientConnection.burst", "kube-api-burst",
		func(c *kpc) int32 { return c.ClientConnection.Burst },
		func(o *Options, v int32) error { o.KubeAPIBurst = v; return nil }),
	field("clientConnection.contentType", "kube-api-content-type",
		func(c *kpc) string { return c.ClientConnection.ContentType },
		func(o *Options, v string) error { o.KubeAPIContentType = v; return nil }),
	field("hostnameOverride", "hostname-override",
		func(c *kpc) string { return c.HostnameOverride },
		func(o *Options, v string) error { o.HostnameOverride = v; return nil }),
	field("clusterCIDR", "cluster-cidr",
		func(c *kpc) string { return c.ClusterCIDR },
		func(o *Options, v string) error {
			o.ClusterCIDRs = nil
			for s := range strings.SplitSeq(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					o.ClusterCIDRs = append(o.ClusterCIDRs, s)
				}
			}
			return nil
		}),
	field("healthzBindAddress", "healthz-bind-address",
		func(c *kpc) string { return c.HealthzBindAddress },
		func(o *Options, v string) (err error) {
			o.HealthzBindAddress, err = normalizeIPPort(v, DefaultHealthzPort)
			return err
		}),
	field("metricsBindAddress", "metrics-bind-address",
		func(c *kpc) string { return c.MetricsBindAddress },
		func(o *Options, v string) (err error) {
			o.MetricsBindAddress, err = normalizeIPPort(v, DefaultMetricsPort)
			return err
		}),
	withAlias(field("enableProfiling", "enable-profiling",
		func(c *kpc) bool { return c.EnableProfiling },
		func(o *Options, v bool) error { o.EnableProfiling = v; return nil }),
		"profiling"),
	// In IPVS mode kube-proxy reads masqueradeAll from the iptables section.
	field("iptables.masqueradeAll", "masquerade-all",
		func(c *kpc) bool { return c.IPTables.MasqueradeAll },
		func(o *Options, v bool) error { o.MasqueradeAll = v; return nil }),
	field("ipvs.scheduler", "ipvs-scheduler",
		func(c *kpc) string { return c.IPVS.Scheduler },
		func(o *Options, v string) error { o.IPVSScheduler = v; return nil }),
	field("ipvs.syncPeriod", "ipvs-sync-period",
		func(c *kpc) time.Duration { return c.IPVS.SyncPeriod.Duration },
		func(o *Options, v time.Duration) error { o.IPVSSyncPeriod = v; return nil }),
	field("ipvs.minSyncPeriod", "ipvs-min-sync-period",
		func(c *kpc) time.Duration { return c.IPVS.MinSyncPeriod.Duration },
		func(o *Options, v time.Duration) error { o.IPVSMinSyncPeriod = v; return nil }),
	field("ipvs.strictARP", "ipvs-strict-arp",
		func(c *kpc) bool { return c.IPVS.StrictARP },
		func(o *Options, v bool) error { o.IPVSStrictARP = v; return nil }),
	listField("ipvs.excludeCIDRs", "ipvs-exclude-cidrs",
		func(c *kpc) []string { return c.IPVS.ExcludeCIDRs },
		func(o *Options, v []string) { o.IPVSExcludeCIDRs = v }),
	field("ipvs.tcpTimeout", "ipvs-tcp-timeout",
		func(c *kpc) time.Duration { return c.IPVS.TCPTimeout.Duration },
		func(o *Options, v time.Duration) error { o.IPVSTCPTimeout = v; return nil }),
	field("ipvs.tcpFinTimeout", "ipvs-tcpfin-timeout",
		func(c *kpc) time.Duration { return c.IPVS.TCPFinTimeout.Duration },
		func(o *Options, v time.Duration) error { o.IPVSTCPFinTimeout = v; return nil }),
	field("ipvs.udpTimeout", "ipvs-udp-timeout",
		func(c *kpc) time.Duration { return c.IPVS.UDPTimeout.Duration },
		func(o *Options, v time.Duration) error { o.IPVSUDPTimeout = v; return nil }),
	field("detectLocalMode", "detect-local-mode",
		func(c *kpc) string { return string(c.DetectLocalMode) },
		func(o *Options, v string) error { o.DetectLocalMode = v; return nil }),
	field("detectLocal.bridgeInterface", "pod-bridge-interface",
		func(c *kpc) string { return c.DetectLocal.BridgeInterface },
		func(o *Options, v string) error { o.PodBridgeInterface = v; return nil }),
	field("detectLocal.interfaceNamePrefix", "pod-interface-name-prefix",
		func(c *kpc) string { return c.DetectLocal.InterfaceNamePrefix },
		func(o *Options, v string) error { o.PodInterfaceNamePrefix = v; return nil }),
	ptrField("conntrack.maxPerCore", "conntrack-max-per-core",
		func(c *kpc) *int32 { return c.Conntrack.MaxPerCore },
		func(o *Options, v int32) { o.Conntrack.MaxPerCore = v }),
	ptrField("conntrack.min", "conntrack-min",
		func(c *kpc) *int32 { return c.Conntrack.Min },
		func(o *Options, v int32) { o.Conntrack.Min = v }),
	ptrField("conntrack.tcpEstablishedTimeout", "conntrack-tcp-timeout-established",
		func(c *kpc) *metav1.Duration { return c.Conntrack.TCPEstablishedTimeout },
		func(o *Options, v metav1.Duration) { o.Conntrack.TCPEstablishedTimeout = v.Duration }),
	ptrField("conntrack.tcpCloseWaitTimeout", "conntrack-tcp-timeout-close-wait",
		func(c *kpc) *metav1.Duration { return c.Conntrack.TCPCloseWaitTimeout },
		func(o *Options, v metav1.Duration) { o.Conntrack.TCPCloseWaitTimeout = v.Duration }),
	field("conntrack.tcpBeLiberal", "conntrack-tcp-be-liberal",
		func(c *kpc) bool { return c.Conntrack.TCPBeLiberal },
		func(o *Options, v bool) error { o.Conntrack.TCPBeLiberal = v; return nil }),
	field("conntrack.udpTimeout", "conntrack-udp-timeout",
		func(c *kpc) time.Duration { return c.Conntrack.UDPTimeout.Duration },
		func(o *Options, v time.Duration) error { o.Conntrack.UDPTimeout = v; return nil }),
	field("conntrack.udpStreamTimeout", "conntrack-udp-timeout-stream",
		func(c *kpc) time.Duration { return c.Conntrack.UDPStreamTimeout.Duration },
		func(o *Options, v time.Duration) error { o.Conntrack.UDPStreamTimeout = v; return nil }),
	listField("nodePortAddresses", "nodeport-addresses",
		func(c *kpc) []string { return c.NodePortAddresses },
		func(o *Options, v []string) { o.NodePortAddresses = v }),
}

// specialFields are read by applyConfig itself (or checked by
// DecodeConfig); everything in them counts as supported.
var specialFields = []string{"apiVersion", "kind", "mode", "featureGates", "logging", "bindAddress", "bindAddressHardFail"}

// handledFields is every path that is not "unsupported": configFields and
// specialFields. A path covers the fields below it.
var handledFields = func() map[string]bool {
	m := map[string]bool{}
	for _, f := range configFields {
		m[f.path] = true
	}
	for _, p := range specialFields {
		m[p] = true
	}
	return m
}()

// upstreamDefaults holds kube-proxy's defaults for the fields this proxy
// does not support (kube-proxy's SetDefaults_KubeProxyConfiguration). A
// file may hold them, as one written by kube-proxy --write-config-to does;
// any other non-zero value is an error.
func upstreamDefaults() *kubeproxyconfig.KubeProxyConfiguration {
	d := func(t time.Duration) metav1.Duration { return metav1.Duration{Duration: t} }
	return &kubeproxyconfig.KubeProxyConfiguration{
		OOMScoreAdj:      ptr.To[int32](-999),
		ConfigSyncPeriod: d(15 * time.Minute),
		IPTables: kubeproxyconfig.KubeProxyIPTablesConfiguration{
			MasqueradeBit:      ptr.To[int32](14), // our mark is 0x4000, bit 14
			LocalhostNodePorts: ptr.To(true),
			SyncPeriod:         d(30 * time.Second),
			MinSyncPeriod:      d(time.Second),
		},
		NFTables: kubeproxyconfig.KubeProxyNFTablesConfiguration{
			MasqueradeBit: ptr.To[int32](14),
			SyncPeriod:    d(30 * time.Second),
			MinSyncPeriod: d(time.Second),
		},
	}
}

var durationType = reflect.TypeFor[metav1.Duration]()

// walkFields calls fn for every field of the struct v, with its JSON path
// and the same field of def (a value of the same type). fn returns
// whether to descend into a struct field. Embedded structs without a JSON
// name (TypeMeta) are walked at the same level.
func walkFields(v, def reflect.Value, prefix string, fn func(path string, v, def reflect.Value) bool) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "-" || !sf.IsExported() {
			continue
		}
		if name == "" && sf.Anonymous && sf.Type.Kind() == reflect.Struct {
			walkFields(v.Field(i), def.Field(i), prefix, fn)
			continue
		}
		if name == "" {
			name = sf.Name
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		if fn(path, v.Field(i), def.Field(i)) && sf.Type.Kind() == reflect.Struct && sf.Type != durationType {
			walkFields(v.Field(i), def.Field(i), path, fn)
		}
	}
}

// isLeaf reports whether a field is a value rather than a section.
func isLeaf(t reflect.Type) bool {
	return t.Kind() != reflect.Struct || t == durationType
}

// unsupportedFields returns an error for every field the proxy does not
// support that holds neither its zero value nor kube-proxy's default.
func unsupportedFields(c *kubeproxyconfig.KubeProxyConfiguration) []error {
	var errs []error
	walkFields(reflect.ValueOf(c).Elem(), reflect.ValueOf(upstreamDefaults()).Elem(), "", func(path string, v, def reflect.Value) bool {
		if handledFields[path] {
			return false
		}
		if !isLeaf(v.Type()) {
			return true
		}
		if v.IsZero() || reflect.DeepEqual(v.Interface(), def.Interface()) {
			return false
		}
		hint := "remove it"
		if !def.IsZero() {
			hint = "remove it or set kube-proxy's default, " + showValue(def)
		}
		errs = append(errs, fmt.Errorf("%s: not supported by %s (got %s); %s", path, CommandName, showValue(v), hint))
		return false
	})
	return errs
}

// unsupportedPaths lists the leaf paths of unsupported fields, and the
// special fields a written file leaves out.
func unsupportedPaths() []string {
	paths := []string{"bindAddress", "bindAddressHardFail"}
	var zero kubeproxyconfig.KubeProxyConfiguration
	v := reflect.ValueOf(&zero).Elem()
	walkFields(v, v, "", func(path string, v, _ reflect.Value) bool {
		if handledFields[path] {
			return false
		}
		if isLeaf(v.Type()) {
			paths = append(paths, path)
			return false
		}
		return true
	})
	return paths
}

func showValue(v reflect.Value) string {
	b, err := json.Marshal(v.Interface())
	if err != nil {
		return fmt.Sprint(v.Interface())
	}
	return string(b)
}

// DecodeConfig decodes a KubeProxyConfiguration from YAML or JSON and
// checks what this proxy can honour: apiVersion and kind, no unknown or
// duplicate fields (decoding is strict and case-sensitive, as the API
// machinery's), mode ipvs or unset, and no unsupported field set to
// anything but its zero value or kube-proxy's default. All problems are
// returned together, each naming its field.
func DecodeConfig(data []byte) (*kubeproxyconfig.KubeProxyConfiguration, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML or JSON: %w", err)
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, fmt.Errorf("empty, want a %s (apiVersion: %s)", ConfigKind, ConfigAPIVersion)
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return nil, fmt.Errorf("want a %s object: %w", ConfigKind, err)
	}
	if tm.APIVersion != ConfigAPIVersion || tm.Kind != ConfigKind {
		return nil, fmt.Errorf("apiVersion %q, kind %q: want apiVersion %q, kind %q", tm.APIVersion, tm.Kind, ConfigAPIVersion, ConfigKind)
	}

	c := &kubeproxyconfig.KubeProxyConfiguration{}
	strictErrs, err := kjson.UnmarshalStrict(js, c, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return nil, err
	}
	errs := strictErrs
	switch c.Mode {
	case "", ProxyModeIPVS:
	default:
		errs = append(errs, fmt.Errorf("mode: %q is not supported: %s only does IPVS; set mode to %q or leave it out", c.Mode, CommandName, ProxyModeIPVS))
	}
	if c.BindAddress != "" {
		if ip, err := netip.ParseAddr(c.BindAddress); err != nil || !ip.IsUnspecified() {
			errs = append(errs, fmt.Errorf("bindAddress: %q is not supported: only an unspecified address (0.0.0.0 or ::) is; remove it", c.BindAddress))
		}
	}
	if c.BindAddressHardFail {
		errs = append(errs, fmt.Errorf("bindAddressHardFail: true is not supported: %s logs a failed health or metrics server and retries it; remove it", CommandName))
	}
	errs = append(errs, unsupportedFields(c)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// applyConfig sets o from c, except for the options whose flag is set in
// fs (which may be nil): flags on the command line override the file. It
// returns the flags set from the file with their field paths.
func (o *Options) applyConfig(c *kubeproxyconfig.KubeProxyConfiguration, fs *pflag.FlagSet) (map[string]string, error) {
	changed := func(names ...string) bool {
		for _, n := range names {
			if fs != nil && fs.Changed(n) {
				return true
			}
		}
		return false
	}
	fromFile := map[string]string{}
	var errs []error

	// kube-proxy's defaults for the bind addresses follow bindAddress's
	// family.
	if ip, err := netip.ParseAddr(c.BindAddress); err == nil && ip.Is6() {
		if !changed("healthz-bind-address") {
			o.HealthzBindAddress = netip.AddrPortFrom(netip.IPv6Unspecified(), DefaultHealthzPort).String()
		}
		if !changed("metrics-bind-address") {
			o.MetricsBindAddress = netip.AddrPortFrom(netip.IPv6Loopback(), DefaultMetricsPort).String()
		}
	}

	for _, f := range configFields {
		if changed(f.flags...) {
			continue
		}
		set, err := f.apply(c, o)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.path, err))
		}
		if set {
			fromFile[f.flags[0]] = f.path
		}
	}

	// Feature gates merge per gate, the command line's winning. The
	// file's are checked here so an error names the file's field.
	if _, err := buildFeatureGate(c.FeatureGates); err != nil {
		errs = append(errs, fmt.Errorf("featureGates: %w", err))
	}
	if len(c.FeatureGates) > 0 {
		gates := map[string]bool{}
		for k, v := range c.FeatureGates {
			gates[k] = v
		}
		if changed("feature-gates") {
			for k, v := range o.FeatureGates {
				gates[k] = v
			}
		} else {
			fromFile["feature-gates"] = "featureGates"
		}
		o.FeatureGates = gates
	}

	if err := o.applyConfigLogging(c.Logging, fs); err != nil {
		errs = append(errs, fmt.Errorf("logging: %w", err))
	}
	return fromFile, errors.Join(errs...)
}

// applyConfigLogging replaces o.Logging's contents with the file's logging
// section, defaulted as kube-proxy does, then sets again the logging flags
// given on the command line. The struct is updated in place: the logging
// flags point into it.
func (o *Options) applyConfigLogging(l logsapi.LoggingConfiguration, fs *pflag.FlagSet) error {
	logsapi.SetRecommendedLoggingConfiguration(&l)
	if fs != nil {
		// The logging flags registered again, on the file's values.
		clone := pflag.NewFlagSet("logging", pflag.ContinueOnError)
		logsapi.AddFlags(&l, clone)
		var err error
		clone.VisitAll(func(f *pflag.Flag) {
			flag := fs.Lookup(f.Name)
			if err != nil || flag == nil || !flag.Changed {
				return
			}
			if f.Name == "vmodule" {
				l.VModule = nil // the flag replaces the file's list
			}
			if e := f.Value.Set(flag.Value.String()); e != nil {
				err = fmt.Errorf("--%s: %w", f.Name, e)
			}
		})
		if err != nil {
			return err
		}
	}
	if o.Logging == nil {
		o.Logging = &logsapi.LoggingConfiguration{}
	}
	*o.Logging = l
	return nil
}

// LoadConfigFile reads o.ConfigFile and applies it to o under the flags
// changed in fs. It returns the flags set from the file with their
// fields, for error messages.
func (o *Options) LoadConfigFile(fs *pflag.FlagSet) (map[string]string, error) {
	data, err := os.ReadFile(o.ConfigFile)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	c, err := DecodeConfig(data)
	if err != nil {
		return nil, fmt.Errorf("--config %s:\n%w", o.ConfigFile, err)
	}
	fromFile, err := o.applyConfig(c, fs)
	if err != nil {
		return nil, fmt.Errorf("--config %s:\n%w", o.ConfigFile, err)
	}
	return fromFile, nil
}

// flagErrorPrefix matches the flag an Options.Validate error starts with.
var flagErrorPrefix = regexp.MustCompile(`^--([a-z0-9-]+)`)

// annotateConfigErrors names the file field next to each validation error
// about an option that came from the configuration file.
func annotateConfigErrors(err error, file string, fromFile map[string]string) error {
	if len(fromFile) == 0 {
		return err
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		if m := flagErrorPrefix.FindStringSubmatch(e.Error()); m != nil {
			if path, ok := fromFile[m[1]]; ok {
				e = fmt.Errorf("%s in %s: %w", path, file, e)
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}
