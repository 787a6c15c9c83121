//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// These cases prove topology-aware routing (trafficDistribution and the
// hints of EndpointSlices), SCTP Services, and the ways a proxy tells
// local pod traffic apart (--detect-local-mode). Both proxies behave the
// same in all of them.
//
// The lab has one node per zone: node1 is in zone-a, node2 in zone-b.

// topoPodsByNode maps each node to the IPs and names of the app's pods on it.
func topoPodsByNode(t *testing.T, ns string) (ips, names map[string][]string) {
	t.Helper()
	pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	ips, names = map[string][]string{}, map[string][]string{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || p.Status.PodIP == "" {
			continue
		}
		ips[p.Spec.NodeName] = append(ips[p.Spec.NodeName], p.Status.PodIP)
		names[p.Spec.NodeName] = append(names[p.Spec.NodeName], p.Name)
	}
	for n := range ips {
		sort.Strings(ips[n])
		sort.Strings(names[n])
	}
	return ips, names
}

// topoSliceHints describes the hints of a Service's EndpointSlices.
func topoSliceHints(t *testing.T, ns, svc string) string {
	t.Helper()
	slices, err := cs.DiscoveryV1().EndpointSlices(ns).List(context.Background(), metav1.ListOptions{LabelSelector: discovery.LabelServiceName + "=" + svc})
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			var zones, nodes []string
			if e.Hints != nil {
				for _, z := range e.Hints.ForZones {
					zones = append(zones, z.Name)
				}
				for _, n := range e.Hints.ForNodes {
					nodes = append(nodes, n.Name)
				}
			}
			parts = append(parts, fmt.Sprintf("%s zones=%v nodes=%v", e.Addresses[0], zones, nodes))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// trafficDistribution: PreferSameZone and PreferSameNode make the
// EndpointSlice controller write zone and node hints, and each node's
// proxy then uses only the endpoints hinted for it: here the pods of its
// own node (one node per zone). Without trafficDistribution every node
// uses every endpoint. Removing it at runtime brings the other node's
// pods back.
func TestTrafficDistribution(t *testing.T) {
	const replicas = 4
	app := newExtApp(t, "e2e-topology", replicas, "", map[string]func(*v1.Service){
		"zone":  func(s *v1.Service) { s.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameZone) },
		"node":  func(s *v1.Service) { s.Spec.TrafficDistribution = ptr.To(v1.ServiceTrafficDistributionPreferSameNode) },
		"plain": nil,
	})
	ips, names := topoPodsByNode(t, app.ns)
	for _, n := range lab.NodeNames() {
		if len(ips[n]) == 0 {
			t.Fatalf("step: no echo pod on %s (pods by node: %v); the case needs pods on every node", n, names)
		}
	}
	all := app.podIPs()
	for _, svc := range []string{"zone", "node"} {
		t.Logf("hints of %s: %s", svc, topoSliceHints(t, app.ns, svc))
	}

	for _, n := range lab.NodeNames() {
		for _, svc := range []string{"zone", "node"} {
			cip := app.svcs[svc].Spec.ClusterIP
			extWaitVS(t, n, "TCP", cip+":80", ips[n])
			extWaitVS(t, n, "UDP", cip+":80", ips[n])
			extWaitIPSet(t, n, "KUBE-CLUSTER-IP", []string{cip + ",tcp:80"}, false)
		}
		extWaitVS(t, n, "TCP", app.svcs["plain"].Spec.ClusterIP+":80", all)
	}
	for _, n := range lab.NodeNames() {
		for _, svc := range []string{"zone", "node"} {
			vip := app.svcs[svc].Spec.ClusterIP + ":80"
			requireAnsweredBy(t, fmt.Sprintf("step: %s -> %s (%s): only the pods of %s", n, vip, svc, n),
				request(t, n, "tcp", vip, 4*len(ips[n])), names[n])
		}
	}
	// A pod's requests stay in its zone too.
	pod := "pod/" + app.ns + "/" + names["node2"][0]
	vip := app.svcs["zone"].Spec.ClusterIP + ":80"
	requireAnsweredBy(t, "step: "+pod+" (node2) -> "+vip, request(t, pod, "tcp", vip, 4*len(ips["node2"])), names["node2"])

	// trafficDistribution removed: the controller drops the hints, every
	// node uses every endpoint again.
	svc, err := cs.CoreV1().Services(app.ns).Get(context.Background(), "zone", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Spec.TrafficDistribution = nil
	if _, err := cs.CoreV1().Services(app.ns).Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("step: removing trafficDistribution: %v", err)
	}
	for _, n := range lab.NodeNames() {
		extWaitVS(t, n, "TCP", vip, all)
	}
	t.Logf("hints of zone after the change: %s", topoSliceHints(t, app.ns, "zone"))
	requireAnsweredBy(t, "step: node1 -> "+vip+" without trafficDistribution", request(t, "node1", "tcp", vip, 4*replicas), app.podNames())
}

// Hints written by hand (a Service without selector and its own
// EndpointSlice), as upstream's CategorizeEndpoints reads them: they are
// used only when every ready endpoint has one; a single endpoint without a
// zone hint makes every node use every endpoint.
func TestTopologyHintsByHand(t *testing.T) {
	ctx := context.Background()
	app := newExtApp(t, "e2e-hints", 2, "", map[string]func(*v1.Service){"echo": nil})
	ips, names := topoPodsByNode(t, app.ns)
	if len(ips["node1"]) != 1 || len(ips["node2"]) != 1 {
		t.Fatalf("step: want one echo pod per node, have %v", names)
	}
	s := labctl.EchoService(app.ns, "manual")
	s.Spec.Type = v1.ServiceTypeClusterIP
	s.Spec.Selector = nil
	for i := range s.Spec.Ports {
		s.Spec.Ports[i].NodePort = 0
	}
	s, err := cs.CoreV1().Services(app.ns).Create(ctx, s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating the Service manual: %v", err)
	}
	zoneOf := map[string]string{"node1": "zone-a", "node2": "zone-b"}
	endpoint := func(node string, hinted bool) discovery.Endpoint {
		e := discovery.Endpoint{Addresses: []string{ips[node][0]}, NodeName: ptr.To(node), Zone: ptr.To(zoneOf[node]),
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}}
		if hinted {
			e.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zoneOf[node]}}}
		}
		return e
	}
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: app.ns, Name: "manual-1", Labels: map[string]string{discovery.LabelServiceName: "manual"}},
		AddressType: discovery.AddressTypeIPv4,
		Endpoints:   []discovery.Endpoint{endpoint("node1", true), endpoint("node2", false)},
		Ports: []discovery.EndpointPort{
			{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)},
			{Name: ptr.To("udp"), Protocol: ptr.To(v1.ProtocolUDP), Port: ptr.To[int32](8080)},
		},
	}
	slice, err = cs.DiscoveryV1().EndpointSlices(app.ns).Create(ctx, slice, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating the EndpointSlice: %v", err)
	}
	vip := s.Spec.ClusterIP + ":80"
	both := []string{ips["node1"][0], ips["node2"][0]}
	sort.Strings(both)
	for _, n := range lab.NodeNames() {
		extWaitVS(t, n, "TCP", vip, both)
	}

	// Every endpoint hinted for its own zone: each node keeps its own.
	slice.Endpoints = []discovery.Endpoint{endpoint("node1", true), endpoint("node2", true)}
	if _, err := cs.DiscoveryV1().EndpointSlices(app.ns).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("step: hinting every endpoint: %v", err)
	}
	for _, n := range lab.NodeNames() {
		extWaitVS(t, n, "TCP", vip, ips[n])
		extWaitIPSet(t, n, "KUBE-CLUSTER-IP", []string{s.Spec.ClusterIP + ",tcp:80"}, false)
		requireAnsweredBy(t, "step: "+n+" -> "+vip+" (hinted for its zone)", request(t, n, "tcp", vip, 3), names[n])
	}
}

// SCTP Services, on the same port number as the TCP and UDP ports of the
// same Service: a virtual server per protocol on the cluster IP and the
// NodePorts, the cluster IP and node ports listed in the ipsets (SCTP node
// ports in the hash:ip,port KUBE-NODE-PORT-SCTP-HASH, since a bitmap:port
// set cannot tell SCTP from TCP), and SCTP associations through each from
// nodes, pods and an external client.
func TestSCTPService(t *testing.T) {
	app := newExtApp(t, "e2e-sctp-svc", 2, "", map[string]func(*v1.Service){"echo": func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "sctp", Protocol: v1.ProtocolSCTP, Port: 80, TargetPort: intstr.FromInt32(8080)})
	}})
	svc := app.svcs["echo"]
	cip := svc.Spec.ClusterIP
	var sctpNodePort int32
	for _, p := range svc.Spec.Ports {
		if p.Protocol == v1.ProtocolSCTP {
			sctpNodePort = p.NodePort
		}
	}
	pods := app.podIPs()
	for i, n := range lab.NodeNames() {
		for _, proto := range []string{"TCP", "UDP", "SCTP"} {
			extWaitVS(t, n, proto, cip+":80", pods)
		}
		np := fmt.Sprintf("%s:%d", labctl.NodeAddr(i+1), sctpNodePort)
		extWaitVS(t, n, "SCTP", np, pods)
		extWaitIPSet(t, n, "KUBE-CLUSTER-IP", []string{cip + ",tcp:80", cip + ",udp:80", cip + ",sctp:80"}, false)
		extWaitIPSet(t, n, "KUBE-NODE-PORT-SCTP-HASH", []string{fmt.Sprintf("%s,sctp:%d", labctl.NodeAddr(i+1), sctpNodePort)}, false)
	}
	for _, n := range lab.NodeNames() {
		requireAnsweredBy(t, "step: "+n+" sctp -> "+cip+":80", request(t, n, "sctp", cip+":80", 6), app.podNames())
		requireAnsweredBy(t, "step: "+n+" tcp -> "+cip+":80 (same port)", request(t, n, "tcp", cip+":80", 4), app.podNames())
	}
	requireAnsweredBy(t, "step: pod sctp -> "+cip+":80", request(t, app.pod(), "sctp", cip+":80", 6), app.podNames())
	for i, n := range lab.NodeNames() {
		np := fmt.Sprintf("%s:%d", labctl.NodeAddr(i+1), sctpNodePort)
		requireAnsweredBy(t, "step: external client sctp -> "+n+"'s NodePort "+np, request(t, "vm", "sctp", np, 6), app.podNames())
	}
}

// --detect-local-mode decides which traffic to a cluster IP is masqueraded:
// traffic from local pods keeps its source address, anything else is
// masqueraded (so that replies come back through this node). A pod on
// node1 talks to a pod on node2 through the cluster IP; the server sees
// the client pod's own address when node1's proxy counts the pod as local,
// and node1's address when it does not. The pods of the lab sit on veths
// named v<hex> and on no bridge, so BridgeInterface with a bridge name
// counts nothing as local.
func TestDetectLocalModes(t *testing.T) {
	const node = "node1"
	server := newExtApp(t, "e2e-detect-server", 1, "node2", map[string]func(*v1.Service){"echo": nil})
	client := newExtApp(t, "e2e-detect-client", 1, node, map[string]func(*v1.Service){"echo": nil})
	cip := server.svcs["echo"].Spec.ClusterIP
	vip := cip + ":80"
	clientPod, clientIP := client.pod(), client.podIPs()[0]
	nodeAddr := labctl.NodeAddr(1).String()

	cases := []struct {
		mode     string
		flags    []string
		fragment string // in node1's KUBE-SERVICES masquerade rule for KUBE-CLUSTER-IP
		local    bool   // the client pod counts as local
	}{
		{"ClusterCIDR", nil, "! -s " + labctl.ClusterCIDR, true},
		{"NodeCIDR", []string{"--detect-local-mode=NodeCIDR"}, "! -s " + labctl.PodCIDR(1).String(), true},
		{"InterfaceNamePrefix", []string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=v"}, "! -i v+", true},
		{"BridgeInterface", []string{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"}, "! -i cbr0", false},
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			return
		}
		if err := lab.RestartProxyWithArgs(context.Background(), node, nil); err != nil {
			t.Errorf("cleanup: restoring the default proxy on %s: %v", node, err)
		} else if err := lab.WaitProxyHealthy(context.Background(), node, 3*propagateTimeout); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		lcEventually(t, "cleanup: "+node+"'s KUBE-SERVICES masquerades by --cluster-cidr again", propagateTimeout, func() (bool, string) {
			rules := detectMasqRules(t, node)
			return len(rules) == 1 && strings.Contains(rules[0], "! -s "+labctl.ClusterCIDR), fmt.Sprintf("rules %q", rules)
		})
	})
	for _, c := range cases {
		if c.flags != nil {
			restarted = true
			if err := lab.RestartProxyWithArgs(context.Background(), node, c.flags); err != nil {
				t.Fatalf("step: %s: restarting the proxy on %s with %q: %v", c.mode, node, c.flags, err)
			}
			if err := lab.WaitProxyHealthy(context.Background(), node, 3*propagateTimeout); err != nil {
				t.Fatalf("step: %s: %v", c.mode, err)
			}
		}
		lcEventually(t, fmt.Sprintf("%s: %s's KUBE-SERVICES masquerades cluster IP traffic unless %q", c.mode, node, c.fragment), propagateTimeout, func() (bool, string) {
			rules := detectMasqRules(t, node)
			return len(rules) == 1 && strings.Contains(rules[0], c.fragment+" "), fmt.Sprintf("rules %q", rules)
		})
		extWaitVS(t, node, "TCP", vip, server.podIPs())
		extWaitIPSet(t, node, "KUBE-CLUSTER-IP", []string{cip + ",tcp:80"}, false)

		for _, proto := range []string{"tcp", "udp"} {
			answers := request(t, clientPod, proto, vip, 3)
			requireAnsweredBy(t, fmt.Sprintf("step: %s: client pod %s -> %s", c.mode, proto, vip), answers, server.podNames())
			want := nodeAddr
			if c.local {
				want = clientIP
			}
			for _, a := range answers {
				ap, err := netip.ParseAddrPort(a.client)
				if err != nil || ap.Addr().String() != want {
					t.Fatalf("step: %s: the server saw the client pod's %s request from %s, want %s (local %v)", c.mode, proto, a.client, want, c.local)
				}
			}
			t.Logf("%s: %s from the client pod %s reached the server from %s", c.mode, proto, clientIP, answers[0].client)
		}
		// The node's own requests are always masqueraded.
		for _, a := range request(t, node, "tcp", vip, 2) {
			if !strings.HasPrefix(a.client, nodeAddr+":") {
				t.Fatalf("step: %s: the server saw %s's request from %s, want %s", c.mode, node, a.client, nodeAddr)
			}
		}
	}
}

// detectMasqRules returns node's KUBE-SERVICES rules that mark traffic to
// KUBE-CLUSTER-IP for masquerade.
func detectMasqRules(t *testing.T, node string) []string {
	t.Helper()
	var rules []string
	for _, l := range strings.Split(nodeOutput(t, node, "iptables-save", "-t", "nat"), "\n") {
		if strings.HasPrefix(l, "-A KUBE-SERVICES ") && strings.Contains(l, "--match-set KUBE-CLUSTER-IP dst,dst") && strings.Contains(l, "-j KUBE-MARK-MASQ") {
			rules = append(rules, l)
		}
	}
	return rules
}
