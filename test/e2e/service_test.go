//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// A ClusterIP reaches every backend, over TCP and UDP, from every node and
// from a pod. Kernel: one rr virtual server per ClusterIP:port with the ready
// pods as Masq real servers; the ClusterIP is bound to kube-ipvs0, listed in
// the KUBE-CLUSTER-IP ipset and masqueraded from outside the cluster CIDR.
func TestClusterIPReachesEveryBackend(t *testing.T) {
	app := newEchoApp(t, "e2e-clusterip", 3)
	cip := app.clusterIP()
	vip := cip + ":80"
	waitVS(t, "TCP", vip, app.podIPs())
	waitVS(t, "UDP", vip, app.podIPs())

	for _, n := range lab.NodeNames() {
		sn := nodeOutput(t, n, "ipvsadm", "-Sn")
		var want []string
		for _, flag := range []string{"-t", "-u"} {
			want = append(want, fmt.Sprintf("-A %s %s -s rr", flag, vip))
			for _, ip := range app.podIPs() {
				want = append(want, fmt.Sprintf("-a %s %s -r %s:8080 -m -w 1", flag, vip, ip))
			}
		}
		requireLines(t, n+": ipvsadm -Sn", sn, want, false)
		waitLines(t, n, "ipset list KUBE-CLUSTER-IP", []string{"ipset", "list", "KUBE-CLUSTER-IP"},
			[]string{cip + ",tcp:80", cip + ",udp:80"}, false)
		if !strings.Contains(nodeOutput(t, n, "ip", "-o", "addr", "show", "dev", "kube-ipvs0"), " "+cip+"/32 ") {
			t.Fatalf("%s: %s is not bound to kube-ipvs0", n, cip)
		}
		requireRule(t, n, "nat", "KUBE-SERVICES", "--match-set KUBE-CLUSTER-IP dst,dst", "-j KUBE-MARK-MASQ", "! -s "+labctl.ClusterCIDR)
		requireRule(t, n, "nat", "KUBE-MARK-MASQ", "--set-xmark 0x4000/0x4000")
		requireRule(t, n, "nat", "KUBE-POSTROUTING", "-j MASQUERADE")
	}

	for _, n := range lab.NodeNames() {
		for _, proto := range []string{"tcp", "udp"} {
			answers := request(t, n, proto, vip, 3*len(app.pods))
			requireAnsweredBy(t, fmt.Sprintf("%s %s -> ClusterIP %s", n, proto, vip), answers, app.podNames())
		}
	}
	// From a pod: the pod's own node does the load balancing.
	for _, pod := range app.podNames()[:1] {
		for _, proto := range []string{"tcp", "udp"} {
			answers := request(t, "pod/"+app.ns+"/"+pod, proto, vip, 3*len(app.pods))
			requireAnsweredBy(t, fmt.Sprintf("pod %s %s -> ClusterIP %s", pod, proto, vip), answers, app.podNames())
		}
	}
}

// A NodePort on every node's address reaches every backend, from every node.
// Kernel: a virtual server per node address and NodePort, the port in the
// KUBE-NODE-PORT-TCP/UDP ipsets, and the NodePort traffic masqueraded.
func TestNodePortReachesEveryBackend(t *testing.T) {
	app := newEchoApp(t, "e2e-nodeport", 3)
	for i, n := range lab.NodeNames() {
		addr := labctl.NodeAddr(i + 1).String()
		for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
			np := app.nodePort(proto)
			if err := lab.WaitIPVSRealServers(context.Background(), n, string(proto), fmt.Sprintf("%s:%d", addr, np), app.podIPs(), propagateTimeout); err != nil {
				t.Fatalf("step: NodePort virtual server on %s: %v", n, err)
			}
		}
		waitLines(t, n, "ipset list KUBE-NODE-PORT-TCP", []string{"ipset", "list", "KUBE-NODE-PORT-TCP"},
			[]string{fmt.Sprint(app.nodePort(v1.ProtocolTCP))}, false)
		waitLines(t, n, "ipset list KUBE-NODE-PORT-UDP", []string{"ipset", "list", "KUBE-NODE-PORT-UDP"},
			[]string{fmt.Sprint(app.nodePort(v1.ProtocolUDP))}, false)
		requireRule(t, n, "nat", "KUBE-NODE-PORT", "--match-set KUBE-NODE-PORT-TCP dst", "-j KUBE-MARK-MASQ")
	}
	for _, from := range lab.NodeNames() {
		for i := range lab.NodeNames() {
			for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
				addr := fmt.Sprintf("%s:%d", labctl.NodeAddr(i+1), app.nodePort(proto))
				answers := request(t, from, strings.ToLower(string(proto)), addr, 3*len(app.pods))
				requireAnsweredBy(t, fmt.Sprintf("%s %s -> NodePort %s", from, proto, addr), answers, app.podNames())
			}
		}
	}
}

// A pod reaches itself through its own Service (hairpin): the request is
// masqueraded (the pod sees the node, not itself, as the client), thanks to
// the KUBE-LOOP-BACK ipset, which lists each node's local endpoints.
func TestHairpin(t *testing.T) {
	app := newEchoApp(t, "e2e-hairpin", 2)
	vip := app.clusterIP() + ":80"
	waitVS(t, "TCP", vip, app.podIPs())
	for ip, pod := range app.pods {
		answers := request(t, "pod/"+app.ns+"/"+pod, "tcp", vip, 4*len(app.pods))
		self := 0
		for _, a := range answers {
			if a.pod != pod {
				continue
			}
			self++
			if strings.HasPrefix(a.client, ip+":") {
				t.Fatalf("pod %s reached itself with its own address %s as the source: hairpin traffic is not masqueraded", pod, a.client)
			}
		}
		if self == 0 {
			t.Fatalf("pod %s never reached itself through %s: answers %v", pod, vip, answers)
		}
	}
	// As upstream: each node lists its own endpoints (hairpin can only
	// happen for a pod on the node that balances its traffic).
	for i, n := range lab.NodeNames() {
		var want []string
		for _, ip := range app.podIPs() {
			if labctl.PodCIDR(i + 1).Contains(netip.MustParseAddr(ip)) {
				want = append(want, fmt.Sprintf("%s,tcp:8080,%s", ip, ip))
			}
		}
		waitLines(t, n, "ipset list KUBE-LOOP-BACK", []string{"ipset", "list", "KUBE-LOOP-BACK"}, want, false)
		requireRule(t, n, "nat", "KUBE-POSTROUTING", "--match-set KUBE-LOOP-BACK dst,dst,src", "-j MASQUERADE")
	}
}

// Scaling the Deployment up and down is reflected in every node's IPVS table
// within the time budget, and traffic follows.
func TestScaleUpAndDown(t *testing.T) {
	ctx := context.Background()
	app := newEchoApp(t, "e2e-scale", 2)
	vip := app.clusterIP() + ":80"
	waitVS(t, "TCP", vip, app.podIPs())

	scale := func(n int) {
		t.Helper()
		d, err := cs.AppsV1().Deployments(app.ns).Get(ctx, app.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Spec.Replicas = ptr.To(int32(n))
		if _, err := cs.AppsV1().Deployments(app.ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("scaling to %d: %v", n, err)
		}
		app.waitPods(t, n)
		start := time.Now()
		waitVS(t, "TCP", vip, app.podIPs())
		waitVS(t, "UDP", vip, app.podIPs())
		t.Logf("scaled to %d: every node's IPVS showed the ready endpoints %.1fs after the EndpointSlice did", n, time.Since(start).Seconds())
		for _, node := range lab.NodeNames() {
			answers := request(t, node, "tcp", vip, 3*n)
			requireAnsweredBy(t, fmt.Sprintf("%s -> %s after scaling to %d", node, vip, n), answers, app.podNames())
		}
	}
	scale(4)
	scale(1)
	// Those endpoint changes were measured from the API to the kernel.
	for _, n := range lab.NodeNames() {
		if m := nodeOutput(t, n, "curl", "-sf", "-m", "5", "http://127.0.0.1:10249/metrics"); !strings.Contains(m, "kubeproxy_network_programming_duration_seconds_bucket") {
			t.Fatalf("%s: /metrics has no kubeproxy_network_programming_duration_seconds after endpoint changes", n)
		}
	}
}

// Deleting a Service removes its virtual servers, its ipset entries and its
// ClusterIP from kube-ipvs0 on every node.
func TestServiceDeletion(t *testing.T) {
	ctx := context.Background()
	app := newEchoApp(t, "e2e-delete", 1)
	cip := app.clusterIP()
	vip := cip + ":80"
	waitVS(t, "TCP", vip, app.podIPs())
	if err := cs.CoreV1().Services(app.ns).Delete(ctx, app.name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for i, n := range lab.NodeNames() {
		for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
			for _, v := range []string{vip, fmt.Sprintf("%s:%d", labctl.NodeAddr(i+1), app.nodePort(proto))} {
				if err := lab.WaitIPVSRealServers(ctx, n, string(proto), v, nil, propagateTimeout); err != nil {
					t.Fatalf("step: virtual server %s %s after deleting the Service: %v", proto, v, err)
				}
			}
		}
		waitLines(t, n, "ipset list KUBE-CLUSTER-IP", []string{"ipset", "list", "KUBE-CLUSTER-IP"}, []string{cip + ",tcp:80", cip + ",udp:80"}, true)
		deadline := time.Now().Add(propagateTimeout)
		for strings.Contains(nodeOutput(t, n, "ip", "-o", "addr", "show", "dev", "kube-ipvs0"), " "+cip+"/32 ") {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s is still bound to kube-ipvs0 %s after the Service was deleted", n, cip, propagateTimeout)
			}
			time.Sleep(time.Second)
		}
	}
}
