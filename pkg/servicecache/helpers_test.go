package servicecache

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// svcObj builds a ClusterIP Service 10.0.0.1 with port "http" TCP 80,
// then applies mods.
func svcObj(ns, name string, mods ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "10.0.0.1",
			ClusterIPs: []string{"10.0.0.1"},
			Ports:      []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func withClusterIPs(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.ClusterIPs = ips
		s.Spec.ClusterIP = ""
		if len(ips) > 0 {
			s.Spec.ClusterIP = ips[0]
		}
	}
}

func withPorts(ports ...v1.ServicePort) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.Ports = ports }
}

func sliceObj(ns, name, service string, ports []discovery.EndpointPort, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   eps,
	}
	if service != "" {
		s.Labels[discovery.LabelServiceName] = service
	}
	if len(eps) > 0 && strings.Contains(eps[0].Addresses[0], ":") {
		s.AddressType = discovery.AddressTypeIPv6
	}
	return s
}

func eport(name string, port int32) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptrTo(name), Port: ptrTo(port), Protocol: ptrTo(v1.ProtocolTCP)}
}

// epObj builds an endpoint with nil conditions (ready, serving).
func epObj(addr string, mods ...func(*discovery.Endpoint)) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{addr}}
	for _, m := range mods {
		m(&e)
	}
	return e
}

func conds(ready, serving, terminating *bool) func(*discovery.Endpoint) {
	return func(e *discovery.Endpoint) {
		e.Conditions = discovery.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
}

func onNode(node, zone string) func(*discovery.Endpoint) {
	return func(e *discovery.Endpoint) {
		e.NodeName = ptrTo(node)
		e.Zone = ptrTo(zone)
	}
}

var (
	yes = ptrTo(true)
	no  = ptrTo(false)
)

// checkText compares multi-line text, printing both on mismatch.
func checkText(t *testing.T, got, want string) {
	t.Helper()
	got, want = strings.TrimSpace(got), strings.TrimSpace(dedent(want))
	if got != want {
		t.Errorf("mismatch\n--- got:\n%s\n--- want:\n%s", got, want)
	}
}

// dedent strips the common tab indentation of a raw-string golden.
func dedent(s string) string {
	lines := strings.Split(strings.Trim(s, "\n"), "\n")
	prefix := ""
	for i, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		p := l[:len(l)-len(strings.TrimLeft(l, "\t"))]
		if i == 0 || len(p) < len(prefix) {
			prefix = p
		}
	}
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, prefix)
	}
	return strings.Join(lines, "\n")
}

func hasNote(notes []string, sub string) bool {
	for _, n := range notes {
		if strings.Contains(n, sub) {
			return true
		}
	}
	return false
}

func ptrTo[T any](v T) *T { return &v }
