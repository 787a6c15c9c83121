//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// A terminating endpoint whose slice omits `serving` is serving, as the v1
// API and upstream read it: with no ready endpoint it is the Service's
// serving-terminating fallback, on every node, and connections reach it.
func TestServingOmittedReadsAsServing(t *testing.T) {
	ctx := context.Background()
	app := newEchoApp(t, "e2e-serving-omitted", 1)
	podIP, podName := app.podIPs()[0], app.podNames()[0]
	const name = "omitted"
	svc, err := cs.CoreV1().Services(app.ns).Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating Service %s: %v", name, err)
	}
	// Ready false, terminating true, serving left out (nil).
	slice, err := cs.DiscoveryV1().EndpointSlices(app.ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{podIP},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Terminating: ptr.To(true)}}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating the EndpointSlice: %v", err)
	}
	if c := slice.Endpoints[0].Conditions; c.Serving != nil {
		t.Fatalf("step: the API server filled in serving=%v; the case needs it omitted", *c.Serving)
	}
	vip := svc.Spec.ClusterIP + ":80"
	waitVS(t, "TCP", vip, []string{podIP})
	waitClusterIPSet(t, svc.Spec.ClusterIP, "tcp")
	for _, n := range lab.NodeNames() {
		requireAnsweredBy(t, fmt.Sprintf("step: %s -> %s (the serving-terminating endpoint)", n, vip), request(t, n, "tcp", vip, 2), []string{podName})
	}
}

// On a node whose ExternalIP sorts below its InternalIP (a cloud node:
// 100.64.x before 172.30.x), --nodeport-addresses=primary serves NodePorts
// on the first InternalIP, as upstream's primary node IP, and never on the
// ExternalIP the host does not have.
func TestPrimaryNodeIPFollowsStatusOrder(t *testing.T) {
	const node = "node1"
	ctx := context.Background()
	internal := labctl.NodeAddr(1).String()
	const external = "100.64.0.11"

	orig, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("step: reading Node %s: %v", node, err)
	}
	origAddrs := slices.Clone(orig.Status.Addresses)
	setAddrs := func(addrs []v1.NodeAddress) error {
		n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Addresses = addrs
		_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	}
	// The ExternalIP first in status order too, as some clouds list it.
	if err := setAddrs(append([]v1.NodeAddress{{Type: v1.NodeExternalIP, Address: external}}, origAddrs...)); err != nil {
		t.Fatalf("step: adding ExternalIP %s to Node %s: %v", external, node, err)
	}
	t.Cleanup(func() {
		if err := setAddrs(origAddrs); err != nil {
			t.Errorf("cleanup: restoring Node %s's addresses: %v", node, err)
		}
	})
	t.Cleanup(func() {
		if err := lab.RestartProxyWithArgs(context.Background(), node, nil); err != nil {
			t.Errorf("cleanup: restoring the proxy on %s: %v", node, err)
		} else if err := lab.WaitProxyHealthy(context.Background(), node, propagateTimeout); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := lab.RestartProxyWithArgs(ctx, node, []string{"--nodeport-addresses=primary"}); err != nil {
		t.Fatalf("step: restarting the proxy with --nodeport-addresses=primary: %v", err)
	}
	if err := lab.WaitProxyHealthy(ctx, node, propagateTimeout); err != nil {
		t.Fatalf("step: %v", err)
	}
	app := newEchoApp(t, "e2e-primary-ip", 1)
	np := app.nodePort(v1.ProtocolTCP)
	onInternal := fmt.Sprintf("%s:%d", internal, np)
	if err := lab.WaitIPVSRealServers(ctx, node, "TCP", onInternal, app.podIPs(), propagateTimeout); err != nil {
		t.Fatalf("step: the NodePort on the primary InternalIP: %v", err)
	}
	dump := nodeOutput(t, node, "ipvsadm", "-Sn")
	for _, l := range strings.Split(dump, "\n") {
		if strings.Contains(l, external+":") {
			t.Errorf("step: a virtual server on the ExternalIP %s, which is not the primary: %q\n%s", external, l, dump)
		}
	}
	requireAnsweredBy(t, "step: outside client -> NodePort "+onInternal, request(t, "vm", "tcp", onInternal, 2), app.podNames())
	requireAnsweredBy(t, "step: node2 -> NodePort "+onInternal, request(t, "node2", "tcp", onInternal, 2), app.podNames())
}
