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
