package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/inspect"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
)

// inspectCluster is a NodePort Service default/web with two pods (one
// terminating) and kube-system/kube-dns with one.
func inspectCluster() []runtime.Object {
	svc := func(ns, name string, typ v1.ServiceType, ip string, ports ...v1.ServicePort) *v1.Service {
		return &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec:       v1.ServiceSpec{Type: typ, ClusterIP: ip, ClusterIPs: []string{ip}, Ports: ports},
		}
	}
	ep := func(addr, ns, pod string, terminating bool) discovery.Endpoint {
		return discovery.Endpoint{
			Addresses:  []string{addr},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(!terminating), Serving: ptr.To(true), Terminating: ptr.To(terminating)},
			NodeName:   ptr.To("node-1"),
			TargetRef:  &v1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod},
		}
	}
	slice := func(ns, svc, name string, port int32, eps ...discovery.Endpoint) *discovery.EndpointSlice {
		return &discovery.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
			AddressType: discovery.AddressTypeIPv4,
			Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(port)}},
			Endpoints:   eps,
		}
	}
	return []runtime.Object{
		svc("default", "web", v1.ServiceTypeNodePort, "10.96.0.10",
			v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080}),
		svc("kube-system", "kube-dns", v1.ServiceTypeClusterIP, "10.96.0.53",
			v1.ServicePort{Name: "http", Protocol: v1.ProtocolTCP, Port: 9153}),
		slice("default", "web", "web-1", 8080, ep("10.244.1.2", "default", "web-a", false), ep("10.244.2.2", "default", "web-b", true)),
		slice("kube-system", "kube-dns", "kube-dns-1", 9153, ep("10.244.1.5", "kube-system", "coredns-a", false)),
	}
}

// inspectKernel holds the virtual servers of inspectCluster on a node with
// address 192.168.1.10, and one of another tool.
func inspectKernel(t *testing.T) *ipvs.FakeIPVS {
	t.Helper()
	key := func(s string, proto ipvs.Proto) ipvs.VSKey {
		ap := netip.MustParseAddrPort(s)
		return ipvs.VSKey{Addr: ap.Addr(), Port: ap.Port(), Proto: proto}
	}
	real := func(s string, weight int) ipvs.RealServer {
		ap := netip.MustParseAddrPort(s)
		return ipvs.RealServer{Key: ipvs.RSKey{Addr: ap.Addr(), Port: ap.Port()}, Weight: weight}
	}
	f := ipvs.NewFakeIPVS(nil)
	for _, k := range []string{"10.96.0.10:80", "192.168.1.10:30080"} {
		vs := &ipvs.VirtualServer{Key: key(k, ipvs.ProtoTCP), Scheduler: "rr",
			RealServers: []ipvs.RealServer{real("10.244.1.2:8080", 1), real("10.244.2.2:8080", 0)}}
		f.Put(vs)
		f.SetConnections(vs.Key, vs.RealServers[0].Key, 3, 1)
		f.SetConnections(vs.Key, vs.RealServers[1].Key, 0, 2)
	}
	f.Put(&ipvs.VirtualServer{Key: key("10.96.0.53:9153", ipvs.ProtoTCP), Scheduler: "rr",
		RealServers: []ipvs.RealServer{real("10.244.1.5:9153", 1)}})
	f.Put(&ipvs.VirtualServer{Key: key("172.16.0.1:8080", ipvs.ProtoTCP), Scheduler: "wlc",
		RealServers: []ipvs.RealServer{{Key: real("10.0.0.5:8080", 0).Key, Weight: 2, Forward: ipvs.ForwardRoute}}})
	return f
}

// inspectEnv runs the inspect command against fakes and records what it
// used.
type inspectEnv struct {
	kernel      *ipvs.FakeIPVS
	client      *fake.Clientset
	kernelErr   error
	opened      bool
	closed      bool
	clientCalls []string // "kubeconfig|master" per clientset call
}

func newInspectEnv(t *testing.T) *inspectEnv {
	return &inspectEnv{kernel: inspectKernel(t), client: fake.NewClientset(inspectCluster()...)}
}

func (e *inspectEnv) run(args ...string) (string, error) {
	cmd := newInspectCommand(inspectDeps{
		openKernel: func() (inspect.Kernel, func(), error) {
			e.opened = true
			if e.kernelErr != nil {
				return nil, nil, e.kernelErr
			}
			return e.kernel, func() { e.closed = true }, nil
		},
		clientset: func(kubeconfig, master string) (kubernetes.Interface, error) {
			e.clientCalls = append(e.clientCalls, kubeconfig+"|"+master)
			return e.client, nil
		},
	})
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

// lists returns the API requests made, as "verb resource namespace
// selector".
func (e *inspectEnv) lists() []string {
	var out []string
	for _, a := range e.client.Actions() {
		parts := []string{a.GetVerb(), a.GetResource().Resource, a.GetNamespace()}
		if l, ok := a.(k8stesting.ListAction); ok {
			parts = append(parts, l.GetListRestrictions().Labels.String())
		}
		out = append(out, strings.Join(strings.Fields(strings.Join(parts, " ")), " "))
	}
	return out
}

func TestInspectText(t *testing.T) {
	e := newInspectEnv(t)
	out, err := e.run("--kubeconfig=/k", "--master=https://api:6443")
	if err != nil {
		t.Fatal(err)
	}
	want := `Prot LocalAddress:Port Scheduler Flags                                 Service
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn  Pod
TCP  10.96.0.10:80 rr                                                  default/web:http (ClusterIP)
  -> 10.244.1.2:8080              Masq    1      3          1          default/web-a
  -> 10.244.2.2:8080              Masq    0      0          2          default/web-b [draining,terminating]
TCP  10.96.0.53:9153 rr                                                kube-system/kube-dns:http (ClusterIP)
  -> 10.244.1.5:9153              Masq    1      0          0          kube-system/coredns-a
TCP  172.16.0.1:8080 wlc                                               (not a Service)
  -> 10.0.0.5:8080                Route   2      0          0
TCP  192.168.1.10:30080 rr                                             default/web:http (NodePort)
  -> 10.244.1.2:8080              Masq    1      3          1          default/web-a
  -> 10.244.2.2:8080              Masq    0      0          2          default/web-b [draining,terminating]
`
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
	if got := fmt.Sprint(e.clientCalls); got != "[/k|https://api:6443]" {
		t.Errorf("clientset built with %s", got)
	}
	// One list of each, nothing else: no watches, no informers.
	if got, want := fmt.Sprint(e.lists()), "[list services list endpointslices]"; got != want {
		t.Errorf("API requests %s, want %s", got, want)
	}
	if !e.opened || !e.closed {
		t.Errorf("kernel opened %v, closed %v", e.opened, e.closed)
	}
	// Read only.
	if l := e.kernel.Log().Lines(); len(l) != 0 {
		t.Errorf("kernel changed: %q", l)
	}
}

func TestInspectJSON(t *testing.T) {
	e := newInspectEnv(t)
	out, err := e.run("--json", "--service=default/web")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Version        int
		KernelOnly     bool
		VirtualServers []struct {
			Address     string
			Port        int
			Services    []struct{ Namespace, Name, PortName, Kind string }
			RealServers []struct {
				Address             string
				Draining            bool
				ActiveConnections   int
				InactiveConnections int
				Endpoint            *struct {
					TargetRef   struct{ Kind, Namespace, Name string }
					Terminating bool
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v in:\n%s", err, out)
	}
	if got.Version != inspect.JSONVersion || got.KernelOnly || len(got.VirtualServers) != 2 {
		t.Fatalf("report:\n%s", out)
	}
	np := got.VirtualServers[1]
	if np.Address != "192.168.1.10" || np.Port != 30080 || len(np.Services) != 1 || np.Services[0].Kind != "NodePort" ||
		np.Services[0].Name != "web" || np.Services[0].PortName != "http" {
		t.Errorf("NodePort virtual server: %+v", np)
	}
	b := np.RealServers[1]
	if !b.Draining || b.InactiveConnections != 2 || b.Endpoint == nil || b.Endpoint.TargetRef.Name != "web-b" || !b.Endpoint.Terminating {
		t.Errorf("draining real server: %+v", b)
	}
	// The filter narrows the EndpointSlices, not the Services.
	if got, want := fmt.Sprint(e.lists()), "[list services list endpointslices default kubernetes.io/service-name=web]"; got != want {
		t.Errorf("API requests %s, want %s", got, want)
	}
}

func TestInspectFilters(t *testing.T) {
	tests := []struct {
		args      []string
		wantVS    []string
		wantLists string
	}{
		{args: []string{"-n", "kube-system"}, wantVS: []string{"10.96.0.53:9153"},
			wantLists: "[list services list endpointslices kube-system]"},
		{args: []string{"--service", "web"}, wantVS: []string{"10.96.0.10:80", "192.168.1.10:30080"},
			wantLists: "[list services list endpointslices kubernetes.io/service-name=web]"},
		{args: []string{"--namespace=default", "--service=kube-dns"}, wantVS: nil,
			wantLists: "[list services list endpointslices default kubernetes.io/service-name=kube-dns]"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			e := newInspectEnv(t)
			out, err := e.run(tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) > 1 && f[0] == "TCP" {
					got = append(got, f[1])
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.wantVS) {
				t.Errorf("virtual servers %v, want %v; output:\n%s", got, tt.wantVS, out)
			}
			if got := fmt.Sprint(e.lists()); got != tt.wantLists {
				t.Errorf("API requests %s, want %s", got, tt.wantLists)
			}
		})
	}
}

func TestInspectKernelOnly(t *testing.T) {
	e := newInspectEnv(t)
	out, err := e.run("--kernel-only")
	if err != nil {
		t.Fatal(err)
	}
	want := `Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.96.0.10:80 rr
  -> 10.244.1.2:8080              Masq    1      3          1
  -> 10.244.2.2:8080              Masq    0      0          2  [draining]
TCP  10.96.0.53:9153 rr
  -> 10.244.1.5:9153              Masq    1      0          0
TCP  172.16.0.1:8080 wlc
  -> 10.0.0.5:8080                Route   2      0          0
TCP  192.168.1.10:30080 rr
  -> 10.244.1.2:8080              Masq    1      3          1
  -> 10.244.2.2:8080              Masq    0      0          2  [draining]
`
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}
	if len(e.clientCalls) != 0 || len(e.client.Actions()) != 0 {
		t.Errorf("API used: %v %v", e.clientCalls, e.lists())
	}
}

func TestInspectErrors(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		kernelErr  error
		listErr    string // resource whose list fails
		failDump   bool
		wantErr    string
		wantOpened bool
		wantUsage  bool
	}{
		{name: "filter with kernel-only", args: []string{"--kernel-only", "-n", "x"}, wantErr: "drop --kernel-only"},
		{name: "bad service", args: []string{"--service=a/b/c"}, wantErr: "NAMESPACE/NAME"},
		{name: "service in another namespace", args: []string{"-n", "a", "--service=b/web"}, wantErr: "not in namespace"},
		{name: "selector injection", args: []string{"--service=web,tier=x"}, wantErr: "not a valid"},
		{name: "positional argument", args: []string{"web"}, wantErr: "unknown command"},
		{name: "unknown flag", args: []string{"--bogus"}, wantErr: "unknown flag", wantUsage: true},
		{name: "not root", kernelErr: fmt.Errorf("open: %w", syscall.EPERM), wantErr: "needs root", wantOpened: true},
		{name: "no IPVS", kernelErr: ipvs.ErrIPVSUnavailable, wantErr: "ip_vs module", wantOpened: true},
		{name: "services list", listErr: "services", wantErr: "list Services: boom", wantOpened: true},
		{name: "slices list", listErr: "endpointslices", wantErr: "list EndpointSlices: boom", wantOpened: true},
		{name: "kernel dump", failDump: true, wantErr: "list IPVS virtual servers: boom", wantOpened: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newInspectEnv(t)
			e.kernelErr = tt.kernelErr
			if tt.listErr != "" {
				e.client.PrependReactor("list", tt.listErr, func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, errors.New("boom")
				})
			}
			if tt.failDump {
				e.kernel.FailOn(ipvs.FakeListServicesCmd, errors.New("boom"))
			}
			out, err := e.run(tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want containing %q", err, tt.wantErr)
			}
			if e.opened != tt.wantOpened {
				t.Errorf("kernel opened %v, want %v", e.opened, tt.wantOpened)
			}
			if hasUsage := strings.Contains(out, "Usage:"); hasUsage != tt.wantUsage {
				t.Errorf("usage printed %v, want %v; output:\n%s", hasUsage, tt.wantUsage, out)
			}
			if tt.kernelErr != nil && len(e.client.Actions()) != 0 {
				t.Errorf("API used after the kernel failed: %v", e.lists())
			}
		})
	}
}

// The subcommand is reachable from the proxy's command and never starts
// the proxy.
func TestInspectSubcommand(t *testing.T) {
	ran := false
	run := func(context.Context, *Options) error { ran = true; return nil }

	out, err := execute(t, run, "--help")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "\n  "+InspectCommandName+" ") {
		t.Errorf("--help does not list %s:\n%s", InspectCommandName, out)
	}
	if strings.Contains(out, "completion") {
		t.Errorf("--help lists a completion command:\n%s", out)
	}

	out, err = execute(t, run, InspectCommandName, "--help")
	if err != nil || !strings.Contains(out, "--kernel-only") || strings.Contains(out, "--ipvs-scheduler") {
		t.Errorf("inspect --help: %v\n%s", err, out)
	}

	// Fails on its flags before touching the kernel or the API server.
	if _, err := execute(t, run, InspectCommandName, "--kernel-only", "--service=web"); err == nil || !strings.Contains(err.Error(), "drop --kernel-only") {
		t.Errorf("inspect error %v", err)
	}
	// The proxy's flags are not the subcommand's.
	if _, err := execute(t, run, InspectCommandName, "--ipvs-scheduler=sh"); err == nil || !strings.Contains(err.Error(), "unknown flag") {
		t.Errorf("inspect with a proxy flag: %v", err)
	}
	if ran {
		t.Error("the proxy ran for the subcommand")
	}
}
