package inspect

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
)

// Node addresses of the fixture; NodePorts are on both.
const (
	node1Addr = "192.168.1.10"
	node2Addr = "192.168.1.11"
)

// fixtureAPI is a cluster with one Service of each kind.
func fixtureAPI() ([]v1.Service, []discovery.EndpointSlice) {
	web := service("default", "web", v1.ServiceTypeNodePort, []string{"10.96.0.10"},
		svcPort("http", v1.ProtocolTCP, 80, 8080, 30080))
	dns := service("kube-system", "kube-dns", v1.ServiceTypeClusterIP, []string{"10.96.0.53"},
		svcPort("dns", v1.ProtocolUDP, 53, 53, 0),
		svcPort("dns-tcp", v1.ProtocolTCP, 53, 53, 0))
	ext := service("default", "ext", v1.ServiceTypeClusterIP, []string{"10.96.0.20"},
		svcPort("", v1.ProtocolTCP, 443, 8443, 0))
	ext.Spec.ExternalIPs = []string{"203.0.113.7"}
	lb := service("shop", "front", v1.ServiceTypeLoadBalancer, []string{"10.96.0.30"},
		svcPort("http", v1.ProtocolTCP, 80, 80, 31000))
	lb.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.9"}}
	dual := service("default", "dual", v1.ServiceTypeClusterIP, []string{"10.96.0.40", "fd00:96::40"},
		svcPort("http", v1.ProtocolTCP, 80, 8080, 0))
	dual.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	// Headless: no virtual server, owns nothing.
	headless := service("default", "headless", v1.ServiceTypeClusterIP, []string{v1.ClusterIPNone},
		svcPort("http", v1.ProtocolTCP, 80, 8080, 0))

	httpPort := []discovery.EndpointPort{slicePort("http", v1.ProtocolTCP, 8080)}
	slices := []discovery.EndpointSlice{
		endpointSlice("default", "web", "web-abcde", discovery.AddressTypeIPv4, httpPort,
			sliceEndpoint("10.244.1.2", "node-1", "default", "web-7f9c-1", ready),
			sliceEndpoint("10.244.2.2", "node-2", "default", "web-7f9c-2", terminating)),
		endpointSlice("kube-system", "kube-dns", "kube-dns-x1", discovery.AddressTypeIPv4,
			[]discovery.EndpointPort{slicePort("dns", v1.ProtocolUDP, 53), slicePort("dns-tcp", v1.ProtocolTCP, 53)},
			sliceEndpoint("10.244.1.5", "node-1", "kube-system", "coredns-a", ready),
			sliceEndpoint("10.244.2.5", "node-2", "kube-system", "coredns-b", unready)),
		// Hand-made endpoints of a Service: no targetRef.
		endpointSlice("default", "ext", "ext-manual", discovery.AddressTypeIPv4,
			[]discovery.EndpointPort{slicePort("", v1.ProtocolTCP, 8443)},
			sliceEndpoint("10.244.1.7", "node-1", "default", "", ready)),
		endpointSlice("shop", "front", "front-1", discovery.AddressTypeIPv4,
			[]discovery.EndpointPort{slicePort("http", v1.ProtocolTCP, 80)},
			sliceEndpoint("10.244.3.4", "node-3", "shop", "front-0", ready)),
		endpointSlice("default", "dual", "dual-v4", discovery.AddressTypeIPv4, httpPort,
			sliceEndpoint("10.244.1.9", "node-1", "default", "dual-0", ready)),
		endpointSlice("default", "dual", "dual-v6", discovery.AddressTypeIPv6, httpPort,
			sliceEndpoint("fd00:244:1::9", "node-1", "default", "dual-0", ready)),
		endpointSlice("default", "headless", "headless-1", discovery.AddressTypeIPv4, httpPort,
			sliceEndpoint("10.244.1.20", "node-1", "default", "db-0", ready)),
	}
	return []v1.Service{web, dns, ext, lb, dual, headless}, slices
}

// fixtureKernel is a node's table for fixtureAPI, with a virtual server of
// another tool and a stale one.
func fixtureKernel() []VirtualServer {
	webRS := []ipvs.DestStats{rs("10.244.1.2:8080", 1, 2, 5), rs("10.244.2.2:8080", 0, 1, 3)}
	dnsSh := vs("10.96.0.53:53/UDP", "sh", rs("10.244.1.5:53", 1, 0, 12))
	dnsSh.Flags = ipvs.FlagSched1 | ipvs.FlagSched2
	other := vs("172.16.0.1:8080/TCP", "wlc", ipvs.DestStats{
		RealServer: ipvs.RealServer{Key: ipvs.RSKey{Addr: vsKey("10.0.0.5:8080/TCP").Addr, Port: 8080}, Weight: 3, Forward: ipvs.ForwardRoute},
	})
	other.Flags, other.Timeout = ipvs.FlagPersistent, 300
	return []VirtualServer{
		vs("10.96.0.10:80/TCP", "rr", webRS...),
		vs(node1Addr+":30080/TCP", "rr", webRS...),
		vs(node2Addr+":30080/TCP", "rr", webRS...),
		// Stale: the ClusterIP of web, on a port it no longer has.
		vs("10.96.0.10:81/TCP", "rr", rs("10.244.1.2:8081", 1, 0, 0)),
		dnsSh,
		vs("10.96.0.53:53/TCP", "rr", rs("10.244.1.5:53", 1, 1, 0), rs("10.244.2.5:53", 1, 0, 0)),
		vs("10.96.0.20:443/TCP", "rr", rs("10.244.1.7:8443", 1, 0, 0)),
		vs("203.0.113.7:443/TCP", "rr", rs("10.244.1.7:8443", 1, 4, 0)),
		// The LoadBalancer IP, with a real server left from an endpoint
		// that went away.
		vs("198.51.100.9:80/TCP", "rr", rs("10.244.3.4:80", 1, 0, 0), rs("10.244.3.9:80", 0, 0, 1)),
		vs(node1Addr+":31000/TCP", "rr", rs("10.244.3.4:80", 1, 0, 0)),
		vs("10.96.0.40:80/TCP", "rr", rs("10.244.1.9:8080", 1, 0, 0)),
		vs("[fd00:96::40]:80/TCP", "rr", rs("[fd00:244:1::9]:8080", 1, 0, 0)),
		// Another tool's.
		other,
		// No Service has UDP 30080: not the NodePort.
		vs(node1Addr+":30080/UDP", "rr"),
	}
}

func TestRender(t *testing.T) {
	svcs, eps := fixtureAPI()
	tests := []struct {
		name string
		in   Input
	}{
		{name: "all", in: Input{VirtualServers: fixtureKernel(), Services: svcs, EndpointSlices: eps}},
		{name: "kernel-only", in: Input{VirtualServers: fixtureKernel(), KernelOnly: true}},
		{name: "namespace", in: Input{VirtualServers: fixtureKernel(), Services: svcs, EndpointSlices: eps, Filter: Filter{Namespace: "kube-system"}}},
		{name: "service", in: Input{VirtualServers: fixtureKernel(), Services: svcs, EndpointSlices: eps, Filter: Filter{Name: "web"}}},
		{name: "empty", in: Input{Services: svcs, EndpointSlices: eps}},
		{name: "empty-kernel-only", in: Input{KernelOnly: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Build(tt.in)
			var text, js bytes.Buffer
			if err := WriteText(&text, r); err != nil {
				t.Fatal(err)
			}
			if err := WriteJSON(&js, r); err != nil {
				t.Fatal(err)
			}
			golden(t, tt.name+".txt", text.String())
			golden(t, tt.name+".json", js.String())
		})
	}
}

func TestBuildOwners(t *testing.T) {
	svcs, eps := fixtureAPI()
	r := Build(Input{VirtualServers: fixtureKernel(), Services: svcs, EndpointSlices: eps})
	got := map[string]string{}
	for _, vs := range r.VirtualServers {
		got[vs.Key.String()] = ownersText(false, vs.Owners)
	}
	want := map[string]string{
		"10.96.0.10:80/TCP":      "default/web:http (ClusterIP)",
		"192.168.1.10:30080/TCP": "default/web:http (NodePort)",
		"192.168.1.11:30080/TCP": "default/web:http (NodePort)",
		"10.96.0.10:81/TCP":      NotAService,
		"10.96.0.53:53/UDP":      "kube-system/kube-dns:dns (ClusterIP)",
		"10.96.0.53:53/TCP":      "kube-system/kube-dns:dns-tcp (ClusterIP)",
		"10.96.0.20:443/TCP":     "default/ext (ClusterIP)",
		"203.0.113.7:443/TCP":    "default/ext (ExternalIP)",
		"198.51.100.9:80/TCP":    "shop/front:http (LoadBalancer)",
		"192.168.1.10:31000/TCP": "shop/front:http (NodePort)",
		"10.96.0.40:80/TCP":      "default/dual:http (ClusterIP)",
		"[fd00:96::40]:80/TCP":   "default/dual:http (ClusterIP)",
		"172.16.0.1:8080/TCP":    NotAService,
		"192.168.1.10:30080/UDP": NotAService,
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: owners %q, want %q", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d virtual servers, want %d", len(got), len(want))
	}
}

// A virtual server on a VIP address is never taken for a NodePort, even
// when its port is one.
func TestNodePortNotOnVIP(t *testing.T) {
	svcs := []v1.Service{
		service("a", "np", v1.ServiceTypeNodePort, []string{"10.96.0.1"}, svcPort("p", v1.ProtocolTCP, 80, 80, 30080)),
		service("b", "cip", v1.ServiceTypeClusterIP, []string{"10.96.0.2"}, svcPort("p", v1.ProtocolTCP, 80, 80, 0)),
	}
	r := Build(Input{Services: svcs, VirtualServers: []VirtualServer{
		vs("10.96.0.2:30080/TCP", "rr"),
		vs("10.0.0.1:30080/TCP", "rr"),
	}})
	if len(r.VirtualServers) != 2 {
		t.Fatalf("virtual servers %+v", r.VirtualServers)
	}
	for _, vs := range r.VirtualServers {
		n := len(vs.Owners)
		switch vs.Key.Addr.String() {
		case "10.96.0.2":
			if n != 0 {
				t.Errorf("%s: owners %v, want none (a VIP address)", vs.Key, vs.Owners)
			}
		case "10.0.0.1":
			if n != 1 || vs.Owners[0].Kind != ipvs.KindNodePort {
				t.Errorf("%s: owners %v, want a/np NodePort", vs.Key, vs.Owners)
			}
		}
	}
}

// Two Services with the same external IP and port both own its virtual
// server; endpoints are looked up in both.
func TestSharedExternalIP(t *testing.T) {
	a := service("ns", "a", v1.ServiceTypeClusterIP, []string{"10.96.0.1"}, svcPort("http", v1.ProtocolTCP, 80, 80, 0))
	b := service("ns", "b", v1.ServiceTypeClusterIP, []string{"10.96.0.2"}, svcPort("web", v1.ProtocolTCP, 80, 80, 0))
	a.Spec.ExternalIPs = []string{"203.0.113.1"}
	b.Spec.ExternalIPs = []string{"203.0.113.1"}
	eps := []discovery.EndpointSlice{
		endpointSlice("ns", "b", "b-1", discovery.AddressTypeIPv4,
			[]discovery.EndpointPort{slicePort("web", v1.ProtocolTCP, 80)},
			sliceEndpoint("10.244.0.2", "n", "ns", "b-0", ready)),
	}
	r := Build(Input{Services: []v1.Service{b, a}, EndpointSlices: eps, VirtualServers: []VirtualServer{
		vs("203.0.113.1:80/TCP", "rr", rs("10.244.0.2:80", 1, 0, 0)),
	}})
	vsr := r.VirtualServers[0]
	if got := ownersText(false, vsr.Owners); got != "ns/a:http (ExternalIP), ns/b:web (ExternalIP)" {
		t.Errorf("owners %q", got)
	}
	if ep := vsr.RealServers[0].Endpoint; ep == nil || ep.TargetRef.Name != "b-0" {
		t.Errorf("endpoint %+v, want b-0", ep)
	}
}

func TestParseFilter(t *testing.T) {
	tests := []struct {
		ns, svc string
		want    Filter
		wantErr string
	}{
		{want: Filter{}},
		{ns: "kube-system", want: Filter{Namespace: "kube-system"}},
		{svc: "web", want: Filter{Name: "web"}},
		{ns: "default", svc: "web", want: Filter{Namespace: "default", Name: "web"}},
		{svc: "default/web", want: Filter{Namespace: "default", Name: "web"}},
		{ns: "default", svc: "default/web", want: Filter{Namespace: "default", Name: "web"}},
		{ns: "other", svc: "default/web", wantErr: "not in namespace"},
		{svc: "/web", wantErr: "NAMESPACE/NAME"},
		{svc: "default/", wantErr: "NAMESPACE/NAME"},
		{svc: "a/b/c", wantErr: "NAMESPACE/NAME"},
	}
	for _, tt := range tests {
		got, err := ParseFilter(tt.ns, tt.svc)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseFilter(%q, %q) error %v, want %q", tt.ns, tt.svc, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseFilter(%q, %q) = %+v, %v; want %+v", tt.ns, tt.svc, got, err, tt.want)
		}
	}
}

// The JSON keys that tell "not a Service" from "not looked up" are there.
func TestJSONShape(t *testing.T) {
	svcs, eps := fixtureAPI()
	decode := func(in Input) []map[string]any {
		var b bytes.Buffer
		if err := WriteJSON(&b, Build(in)); err != nil {
			t.Fatal(err)
		}
		var out struct {
			Version        int              `json:"version"`
			VirtualServers []map[string]any `json:"virtualServers"`
		}
		if err := json.Unmarshal(b.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		if out.Version != JSONVersion {
			t.Errorf("version %d", out.Version)
		}
		return out.VirtualServers
	}
	for _, v := range decode(Input{VirtualServers: fixtureKernel(), Services: svcs, EndpointSlices: eps}) {
		if s, ok := v["services"].([]any); !ok || s == nil {
			t.Errorf("%v:%v: services %#v, want a list", v["address"], v["port"], v["services"])
		}
	}
	for _, v := range decode(Input{VirtualServers: fixtureKernel(), KernelOnly: true}) {
		if _, ok := v["services"]; ok {
			t.Errorf("kernel-only %v:%v has services", v["address"], v["port"])
		}
	}
}

func TestReadKernel(t *testing.T) {
	f := ipvs.NewFakeIPVS(nil)
	web := &ipvs.VirtualServer{Key: vsKey("10.96.0.10:80/TCP"), Scheduler: "rr", RealServers: []ipvs.RealServer{
		rs("10.244.2.2:8080", 0, 0, 0).RealServer,
		rs("10.244.1.2:8080", 1, 0, 0).RealServer,
	}}
	f.Put(web)
	f.Put(&ipvs.VirtualServer{Key: vsKey("10.96.0.1:443/TCP"), Scheduler: "wrr", Flags: ipvs.FlagPersistent, Timeout: 60})
	f.SetConnections(web.Key, web.RealServers[0].Key, 3, 4)

	got, err := ReadKernel(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Key.String() != "10.96.0.1:443/TCP" || got[1].Key.String() != "10.96.0.10:80/TCP" {
		t.Fatalf("virtual servers %+v", got)
	}
	if got[0].Scheduler != "wrr" || got[0].Flags != ipvs.FlagPersistent || got[0].Timeout != 60 || len(got[0].RealServers) != 0 {
		t.Errorf("first: %+v", got[0])
	}
	rss := got[1].RealServers
	if len(rss) != 2 || rss[0].Key.String() != "10.244.1.2:8080" || rss[1] != rs("10.244.2.2:8080", 0, 3, 4) {
		t.Errorf("real servers %+v", rss)
	}

	f.FailOn(ipvs.FakeListDestinationsCmd(web.Key), errBoom)
	if _, err := ReadKernel(f); err == nil || !strings.Contains(err.Error(), "10.96.0.10:80/TCP") {
		t.Errorf("destination dump failure: %v", err)
	}
	f.FailOn(ipvs.FakeListServicesCmd, errBoom)
	if _, err := ReadKernel(f); err == nil {
		t.Error("service dump failure not returned")
	}
}

var errBoom = errors.New("boom")
