//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Restarting the proxy (SIGTERM, then start) while a client loops on the
// ClusterIP loses no request: the kernel state stays in place while the
// proxy is down, and the new proxy finds it identical and keeps it.
func TestProxyRestartLosesNoRequest(t *testing.T) {
	ctx := context.Background()
	app := newEchoApp(t, "e2e-restart", 2)
	vip := app.clusterIP() + ":80"
	waitVS(t, "TCP", vip, app.podIPs())
	const node = "node1"
	// Only this Service's lines: other tests' namespaces may still be going.
	mine := func() []string { return app.ipvsLines(nodeOutput(t, node, "ipvsadm", "-Sn")) }
	before := mine()

	// About 20 s of requests, one every 100 ms, each bounded by 2 s.
	var wg sync.WaitGroup
	var out string
	var loopErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		out, loopErr = lab.Output(ctx, node, echoBin, "client", "--proto", "tcp", "--addr", vip,
			"--count", "200", "--interval", "100ms", "--timeout", "2s")
	}()
	time.Sleep(3 * time.Second) // let the loop run before the restart
	if err := lab.StopProxy(ctx, node); err != nil {
		t.Fatalf("stopping the proxy: %v", err)
	}
	during := mine()
	if !slices.Equal(before, during) {
		t.Errorf("the IPVS table changed while the proxy was stopped:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(during, "\n"))
	}
	time.Sleep(2 * time.Second) // traffic flows with no proxy running
	if err := lab.StartProxy(ctx, node); err != nil {
		t.Fatalf("starting the proxy: %v", err)
	}
	wg.Wait()
	failed := 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, "ERR") {
			failed++
			t.Errorf("request failed across the restart: %s", l)
		}
	}
	if loopErr != nil || failed > 0 {
		t.Fatalf("client loop across the proxy restart: %d failed, err %v", failed, loopErr)
	}
	// The restarted proxy keeps the same state (once it has synced).
	waitVS(t, "TCP", vip, app.podIPs())
	after := mine()
	if !slices.Equal(before, after) {
		t.Fatalf("the IPVS table differs after the restart:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
}

// ipvsLines returns the sorted `ipvsadm -Sn` lines of the app's Service:
// its ClusterIP and its NodePorts.
func (a *echoApp) ipvsLines(dump string) []string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(dump), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		mine := strings.HasPrefix(f[2], a.clusterIP()+":")
		for _, p := range a.svc.Spec.Ports {
			mine = mine || strings.HasSuffix(f[2], fmt.Sprintf(":%d", p.NodePort))
		}
		if mine {
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	return lines
}

// Bad input is skipped and the rest keeps working: an IPv6 EndpointSlice
// behind an IPv4 Service, an EndpointSlice whose port is missing, and the
// same endpoint in two slices. (An invalid clusterIP cannot get past the API
// server's validation; the service cache's unit tests cover it.)
func TestBadInputIsSkipped(t *testing.T) {
	ctx := context.Background()
	app := newEchoApp(t, "e2e-badinput", 1)
	podIP := app.podIPs()[0]

	mkService := func(name string) *v1.Service {
		t.Helper()
		svc, err := cs.CoreV1().Services(app.ns).Create(ctx, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating Service %s: %v", name, err)
		}
		return svc
	}
	mkSlice := func(svc, name string, family discoveryv1.AddressType, addr string, port *int32) {
		t.Helper()
		_, err := cs.DiscoveryV1().EndpointSlices(app.ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: family,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: port}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating EndpointSlice %s: %v", name, err)
		}
	}

	mixed := mkService("mixed")
	mkSlice("mixed", "mixed-v4", discoveryv1.AddressTypeIPv4, podIP, ptr.To[int32](8080))
	mkSlice("mixed", "mixed-v6", discoveryv1.AddressTypeIPv6, "fd00::1", ptr.To[int32](8080))
	noPort := mkService("noport")
	mkSlice("noport", "noport-1", discoveryv1.AddressTypeIPv4, podIP, nil)
	dup := mkService("dup")
	mkSlice("dup", "dup-1", discoveryv1.AddressTypeIPv4, podIP, ptr.To[int32](8080))
	mkSlice("dup", "dup-2", discoveryv1.AddressTypeIPv4, podIP, ptr.To[int32](8080))

	// The IPv6 endpoint is ignored, the IPv4 one programmed.
	waitVS(t, "TCP", mixed.Spec.ClusterIP+":80", []string{podIP})
	// No port: a virtual server without real servers.
	waitVS(t, "TCP", noPort.Spec.ClusterIP+":80", []string{})
	// The duplicate endpoint appears once.
	waitVS(t, "TCP", dup.Spec.ClusterIP+":80", []string{podIP})
	waitClusterIPSet(t, mixed.Spec.ClusterIP, "tcp")
	waitClusterIPSet(t, dup.Spec.ClusterIP, "tcp")
	for _, n := range lab.NodeNames() {
		rs, _, err := lab.IPVSVirtualServer(ctx, n, "TCP", dup.Spec.ClusterIP+":80")
		if err != nil || len(rs) != 1 {
			t.Fatalf("%s: the duplicated endpoint gives real servers %v (err %v), want exactly one", n, rs, err)
		}
		if strings.Contains(nodeOutput(t, n, "ipvsadm", "-Sn"), "fd00::1") {
			t.Fatalf("%s: the IPv6 endpoint of an IPv4 Service was programmed", n)
		}
	}
	// The rest keeps working: the proxies still run and serve every Service.
	for _, n := range lab.NodeNames() {
		for _, svc := range []*v1.Service{app.svc, mixed, dup} {
			answers := request(t, n, "tcp", svc.Spec.ClusterIP+":80", 2)
			requireAnsweredBy(t, fmt.Sprintf("%s -> %s", n, svc.Name), answers, app.podNames())
		}
	}
}

// Extreme and changing input: a slice of 1000 endpoints (the API's
// maximum), a Service of 100 ports, a Service whose slice is empty, and a
// Service flipping types (ClusterIP, NodePort, ExternalName, ClusterIP).
// Each is programmed as far as it makes sense and the other Services keep
// answering.
func TestExtremeInput(t *testing.T) {
	ctx := context.Background()
	app := newEchoApp(t, "e2e-extreme", 1)
	mk := func(name string, ports int) *v1.Service {
		t.Helper()
		s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}}
		for i := range ports {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: fmt.Sprintf("p%d", i), Protocol: v1.ProtocolTCP,
				Port: int32(1000 + i), TargetPort: intstr.FromInt32(int32(8000 + i))})
		}
		s, err := cs.CoreV1().Services(app.ns).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("step: creating Service %s: %v", name, err)
		}
		return s
	}
	slice := func(svc string, addrs []string, ports int) {
		t.Helper()
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: svc + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: discoveryv1.AddressTypeIPv4,
		}
		for _, a := range addrs {
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
		}
		for i := range ports {
			es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr.To(fmt.Sprintf("p%d", i)), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To(int32(8000 + i))})
		}
		if _, err := cs.DiscoveryV1().EndpointSlices(app.ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatalf("step: creating the EndpointSlice of %s: %v", svc, err)
		}
	}

	big := mk("big", 1)
	var many []string
	for i := range 1000 {
		many = append(many, fmt.Sprintf("10.250.%d.%d", i/250, i%250+1))
	}
	slice("big", many, 1)
	wide := mk("wide", 100)
	slice("wide", []string{app.podIPs()[0]}, 100)
	empty := mk("empty", 1)
	slice("empty", nil, 1)

	for _, n := range lab.NodeNames() {
		lcEventually(t, n+": 1000 real servers behind "+big.Spec.ClusterIP+":1000", propagateTimeout, func() (bool, string) {
			rs, _, err := lab.IPVSVirtualServer(ctx, n, "TCP", big.Spec.ClusterIP+":1000")
			return err == nil && len(rs) == 1000, fmt.Sprintf("%d real servers (err %v)", len(rs), err)
		})
		lcEventually(t, n+": 100 virtual servers on "+wide.Spec.ClusterIP, propagateTimeout, func() (bool, string) {
			out := nodeOutput(t, n, "ipvsadm", "-Sn")
			c := strings.Count(out, "-A -t "+wide.Spec.ClusterIP+":")
			return c == 100, fmt.Sprintf("%d virtual servers", c)
		})
		extWaitVS(t, n, "TCP", empty.Spec.ClusterIP+":1000", []string{})
	}
	requireAnsweredBy(t, "step: node1 -> one of the 100 ports", request(t, "node1", "tcp", wide.Spec.ClusterIP+":1080", 2), app.podNames())

	// A Service flipping types.
	flip := mk("flip", 1)
	slice("flip", app.podIPs(), 1)
	pods := app.podIPs()
	extWaitVS(t, "node1", "TCP", flip.Spec.ClusterIP+":1000", pods)
	update := func(step string, change func(*v1.Service)) *v1.Service {
		t.Helper()
		s, err := cs.CoreV1().Services(app.ns).Get(ctx, "flip", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		change(s)
		s, err = cs.CoreV1().Services(app.ns).Update(ctx, s, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("step: %s: %v", step, err)
		}
		return s
	}
	np := update("to NodePort", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort })
	nodePortVS := fmt.Sprintf("%s:%d", labctl.NodeAddr(1), np.Spec.Ports[0].NodePort)
	extWaitVS(t, "node1", "TCP", nodePortVS, pods)
	update("back to ClusterIP", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeClusterIP
		s.Spec.Ports[0].NodePort = 0
	})
	extWaitVS(t, "node1", "TCP", nodePortVS, nil)
	oldIP := flip.Spec.ClusterIP
	update("to ExternalName", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeExternalName
		s.Spec.ExternalName = "example.com"
		s.Spec.ClusterIP, s.Spec.ClusterIPs, s.Spec.IPFamilies, s.Spec.IPFamilyPolicy = "", nil, nil, nil
	})
	extWaitVS(t, "node1", "TCP", oldIP+":1000", nil)
	back := update("back to ClusterIP from ExternalName", func(s *v1.Service) {
		s.Spec.Type, s.Spec.ExternalName = v1.ServiceTypeClusterIP, ""
	})
	extWaitVS(t, "node1", "TCP", back.Spec.ClusterIP+":1000", pods)

	// Everything else still works.
	for _, n := range lab.NodeNames() {
		requireAnsweredBy(t, "step: "+n+" -> "+app.name, request(t, n, "tcp", app.clusterIP()+":80", 2), app.podNames())
	}
}
