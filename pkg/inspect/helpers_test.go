package inspect

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// golden compares got with testdata/name.golden, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./pkg/inspect -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// svcPort is a Service port; nodePort 0 for none.
func svcPort(name string, proto v1.Protocol, port, target, nodePort int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target), NodePort: nodePort}
}

// service builds a Service of type typ with the given cluster IPs.
func service(ns, name string, typ v1.ServiceType, clusterIPs []string, ports ...v1.ServicePort) v1.Service {
	s := v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1.ServiceSpec{Type: typ, ClusterIPs: clusterIPs, Ports: ports},
	}
	if len(clusterIPs) > 0 {
		s.Spec.ClusterIP = clusterIPs[0]
	}
	return s
}

// endpoint states for sliceEndpoint.
const (
	ready       = "ready"
	terminating = "terminating" // serving and terminating
	unready     = "unready"
)

// sliceEndpoint is an endpoint on node; pod "" leaves the targetRef out.
func sliceEndpoint(addr, node, ns, pod, state string) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{addr}, NodeName: ptr.To(node)}
	switch state {
	case ready:
		e.Conditions = discovery.EndpointConditions{Ready: ptr.To(true)}
	case terminating:
		e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	case unready:
		e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false)}
	default:
		panic("unknown endpoint state " + state)
	}
	if pod != "" {
		e.TargetRef = &v1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod}
	}
	return e
}

func slicePort(name string, proto v1.Protocol, port int32) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: ptr.To(port)}
}

// endpointSlice is a slice of the Service ns/svc.
func endpointSlice(ns, svc, name string, family discovery.AddressType, ports []discovery.EndpointPort, eps ...discovery.Endpoint) discovery.EndpointSlice {
	return discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns,
			Name:      name,
			Labels:    map[string]string{discovery.LabelServiceName: svc},
		},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
}

// vs is a virtual server read from the kernel, e.g. vs("10.96.0.10:80/TCP", "rr", rs(...)...).
func vs(key, sched string, rss ...ipvs.DestStats) VirtualServer {
	return VirtualServer{Key: vsKey(key), Scheduler: sched, RealServers: rss}
}

func vsKey(s string) ipvs.VSKey {
	ap, protoName, ok := cutLast(s, '/')
	if !ok {
		panic("no protocol in " + s)
	}
	proto, ok := ipvs.ProtoFromV1(v1.Protocol(protoName))
	if !ok {
		panic("bad protocol in " + s)
	}
	a := netip.MustParseAddrPort(ap)
	return ipvs.VSKey{Addr: a.Addr(), Port: a.Port(), Proto: proto}
}

func cutLast(s string, sep byte) (before, after string, ok bool) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// rs is a masqueraded real server "addr:port" with its connection counts.
func rs(addrPort string, weight, active, inactive int) ipvs.DestStats {
	a := netip.MustParseAddrPort(addrPort)
	return ipvs.DestStats{
		RealServer:    ipvs.RealServer{Key: ipvs.RSKey{Addr: a.Addr(), Port: a.Port()}, Weight: weight, Forward: ipvs.ForwardMasq},
		ActiveConns:   active,
		InactiveConns: inactive,
	}
}
