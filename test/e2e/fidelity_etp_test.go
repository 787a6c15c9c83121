//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// externalTrafficPolicy: Local as upstream's iptables and nftables modes
// apply it: only to traffic from outside the cluster. Traffic from the
// cluster's pods and from the nodes themselves to the Service's external
// addresses (load-balancer IP, external IP, node port) goes to every
// endpoint, the node's own masqueraded; traffic from outside reaches only
// a node with a local endpoint, keeps its source address, and is refused by
// a node without one.
//
// The one echo pod runs on node2. On node1 the external virtual servers have
// no real server; the proxy adds a firewall-mark virtual server with the
// cluster's endpoints, lists the external addresses with its mark in
// KUBE-EXTERNAL-LOCAL-MARK, and the mangle chain KUBE-EXTERNAL-LOCAL-MARK
// marks packets from pods (the local-traffic detector) and from the node
// (which also get the masquerade mark, and so a second firewall-mark
// virtual server on mark+0x4000). On node2, whose local endpoints are all
// of them, nothing is marked: its own connections to the load-balancer and
// external IPs keep that address as their source, which the case only logs.

const (
	fidLBIP       = "192.0.2.33" // the load-balancer ingress IP
	fidExternalIP = "192.0.2.34" // spec.externalIPs
	fidMarkSet    = "KUBE-EXTERNAL-LOCAL-MARK"
)

func TestExternalTrafficPolicyLocalFromInside(t *testing.T) {
	if lab.Proxy == "upstream" {
		t.Skip("upstream IPVS mode sends every client to every endpoint when the node has no local one (its LocalFallbackToCluster): the case is ours and upstream's iptables mode's")
	}
	nodes := lab.NodeNames()
	if len(nodes) < 2 {
		t.Skipf("needs two nodes, the lab has %v", nodes)
	}
	without, with := nodes[0], nodes[1] // no endpoint on node1, the only one on node2

	app := newExtApp(t, "e2e-fid-etp", 1, with, map[string]func(*v1.Service){
		"lb": func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.ExternalIPs = []string{fidExternalIP}
		},
		"np": func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		},
	})
	app.setIngress(t, "lb", v1.LoadBalancerIngress{IP: fidLBIP})
	// Client pods, one per node (their own Service only makes newExtApp
	// wait until they are ready).
	clientOn := map[string]*extApp{
		without: newExtApp(t, "e2e-fid-etp-c1", 1, without, map[string]func(*v1.Service){"c": nil}),
		with:    newExtApp(t, "e2e-fid-etp-c2", 1, with, map[string]func(*v1.Service){"c": nil}),
	}
	pod := app.podIPs()
	endpoints := app.podNames()

	lbVIP := fidLBIP + ":80"
	extVIP := fidExternalIP + ":80"
	nodePort := func(node, svc string) string { return fmt.Sprintf("%s:%d", extNodeAddr(node), app.nodePort(svc)) }

	// The kernel state first: on node1 the external virtual servers are
	// empty and their addresses marked; on node2 they hold the pod.
	for _, vip := range []string{lbVIP, extVIP, nodePort(without, "lb"), nodePort(without, "np")} {
		extWaitVS(t, without, "TCP", vip, []string{})
	}
	for _, vip := range []string{lbVIP, extVIP, nodePort(with, "lb"), nodePort(with, "np")} {
		extWaitVS(t, with, "TCP", vip, pod)
	}
	// One mark per Service port: the load balancer's addresses share
	// one, the other Service's node port has its own.
	fidWaitMarked(t, without, []string{
		fidLBIP + ",tcp:80",
		fidExternalIP + ",tcp:80",
		fmt.Sprintf("%s,tcp:%d", extNodeAddr(without), app.nodePort("lb")),
	}, pod)
	fidWaitMarked(t, without, []string{fmt.Sprintf("%s,tcp:%d", extNodeAddr(without), app.nodePort("np"))}, pod)
	requireRule(t, without, "mangle", "PREROUTING", "-j "+fidMarkSet)
	requireRule(t, without, "mangle", "OUTPUT", "-j "+fidMarkSet)
	requireRule(t, without, "mangle", fidMarkSet, "--src-type LOCAL", "--match-set "+fidMarkSet+" dst,dst", "--map-mark")
	requireRule(t, without, "mangle", fidMarkSet, "--src-type LOCAL", "--match-set "+fidMarkSet+" dst,dst", "-j MARK")

	// From inside: pods and nodes, both nodes, every external address.
	for _, node := range []string{without, with} {
		addrs := []string{lbVIP, extVIP, nodePort(node, "lb"), nodePort(node, "np")}
		for _, addr := range addrs {
			src := clientOn[node].pod()
			what := fmt.Sprintf("pod on %s -> %s", node, addr)
			answers := extAnswered(t, what, src, addr, 3, endpoints)
			t.Logf("%s: answered by %v", what, answers)

			what = fmt.Sprintf("%s itself -> %s", node, addr)
			answers = extAnswered(t, what, node, addr, 3, endpoints)
			if node == without {
				// Sent to another node's endpoint: masqueraded to an
				// address of node1, never the external address itself.
				fidRequireNodeSource(t, what, node, answers, fidLBIP, fidExternalIP)
			} else {
				t.Logf("%s: answered by %v", what, answers)
			}
		}
	}

	// From outside: through node2, answered with the client's address;
	// through node1, refused.
	fidRoute(t, with)
	for _, addr := range []string{lbVIP, extVIP, nodePort(with, "lb"), nodePort(with, "np")} {
		what := fmt.Sprintf("external client -> %s through %s", addr, with)
		answers := extAnswered(t, what, "vm", addr, 3, endpoints)
		extRequireClient(t, what, answers, extClient, true)
	}
	fidRoute(t, without)
	for _, addr := range []string{lbVIP, extVIP, nodePort(without, "lb"), nodePort(without, "np")} {
		what := fmt.Sprintf("external client -> %s through %s (no local endpoint)", addr, without)
		fidFails(t, what, without, addr)
	}
}

// fidRoute sends the load-balancer and external IPs from the VM's root
// namespace through node.
func fidRoute(t *testing.T, node string) {
	t.Helper()
	extRoute(t, fidLBIP, node)
	extRoute(t, fidExternalIP, node)
}

// fidWaitMarked waits until node's KUBE-EXTERNAL-LOCAL-MARK lists every
// entry with one mark, and until `ipvsadm -Ln` has a firewall-mark virtual
// server on that mark with the wanted real servers (pod IPs). It prints the
// node's state on failure.
func fidWaitMarked(t *testing.T, node string, entries, realServers []string) {
	t.Helper()
	deadline := time.Now().Add(propagateTimeout)
	var set, ipvs string
	for {
		// Errors (the set not created yet) are retried until the deadline.
		var errSet, errIPVS error
		set, errSet = lab.Output(context.Background(), node, "ipset", "list", fidMarkSet)
		ipvs, errIPVS = lab.Output(context.Background(), node, "ipvsadm", "-Ln")
		if errSet != nil || errIPVS != nil {
			set += fmt.Sprintf("\n(ipset: %v; ipvsadm: %v)", errSet, errIPVS)
		}
		mark := ""
		ok := true
		for _, e := range entries {
			m := fidMarkOf(set, e)
			if m == "" || (mark != "" && m != mark) {
				ok = false
				break
			}
			mark = m
		}
		if ok && fidFWMServer(ipvs, mark, realServers) {
			t.Logf("%s: %s lists %v with mark %s, and its firewall-mark virtual server balances to %v", node, fidMarkSet, entries, mark, realServers)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("step: %s: want %v in %s with one mark and a firewall-mark virtual server on it with real servers %v; ipset list:\n%s\nipvsadm -Ln:\n%s\niptables-save -t mangle:\n%s",
				node, entries, fidMarkSet, realServers, set, ipvs, nodeOutput(t, node, "iptables-save", "-t", "mangle"))
		}
		time.Sleep(time.Second)
	}
}

// fidMarkOf finds "ENTRY skbmark 0xM/0xMASK" in `ipset list` output and
// returns the mark as ipvsadm -Ln prints it (decimal), "" when absent.
func fidMarkOf(list, entry string) string {
	for _, l := range strings.Split(list, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == entry && f[1] == "skbmark" {
			var m uint32
			if _, err := fmt.Sscanf(strings.SplitN(f[2], "/", 2)[0], "0x%x", &m); err == nil && m != 0 {
				return fmt.Sprint(m)
			}
		}
	}
	return ""
}

// fidFWMServer reports whether `ipvsadm -Ln` shows "FWM <mark>" with
// exactly the wanted real servers (IPs; any port).
func fidFWMServer(out, mark string, want []string) bool {
	if mark == "" {
		return false
	}
	var got []string
	in := false
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "SCTP" || f[0] == "FWM"):
			in = f[0] == "FWM" && f[1] == mark
		case in && len(f) >= 2 && f[0] == "->" && f[1] != "RemoteAddress:Port":
			got = append(got, f[1][:strings.LastIndex(f[1], ":")])
		}
	}
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || g == w
		}
		if !found {
			return false
		}
	}
	return true
}

// fidRequireNodeSource checks that every answer saw one of node's own
// addresses as the client, other than the Service's (masqueraded).
func fidRequireNodeSource(t *testing.T, what, node string, answers []answer, vips ...string) {
	t.Helper()
	addrs := nodeOutput(t, node, "ip", "-o", "-4", "addr", "show")
	for _, a := range answers {
		ip := a.client[:strings.LastIndex(a.client, ":")]
		for _, v := range vips {
			if ip == v {
				t.Fatalf("%s: pod %s saw client %s: the external address itself, not masqueraded", what, a.pod, a.client)
			}
		}
		if !strings.Contains(addrs, " "+ip+"/") {
			t.Fatalf("%s: pod %s saw client %s, not an address of %s (masqueraded):\n%s", what, a.pod, a.client, node, addrs)
		}
	}
	t.Logf("%s: masqueraded, the pod saw %v", what, answers)
}

// fidFails waits until requests from the VM's root namespace to addr
// through node are refused (the virtual server has no real server), for
// the routes just changed; it prints the node's state on failure.
func fidFails(t *testing.T, what, node, addr string) {
	t.Helper()
	deadline := time.Now().Add(propagateTimeout)
	for {
		answers, failed := extTry(t, "vm", addr, 2, extFailTimeout)
		refused := len(answers) == 0
		for _, f := range failed {
			refused = refused && strings.Contains(f, "connection refused")
		}
		if refused {
			t.Logf("%s: refused as expected: %q", what, failed)
			return
		}
		if time.Now().After(deadline) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			route, _ := lab.Output(ctx, "vm", "ip", "route")
			t.Fatalf("step: %s: want refused, got answers %v, failures %q\nVM routes:\n%s\n%s ipvsadm -Ln:\n%s",
				what, answers, failed, route, node, nodeOutput(t, node, "ipvsadm", "-Ln"))
		}
		time.Sleep(time.Second)
	}
}
