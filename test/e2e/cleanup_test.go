//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// ---------------------------------------------------------------------------
// 6. --cleanup

// --cleanup run on a node whose proxy is stopped removes the proxy's
// state: its virtual servers, kube-ipvs0, the KUBE-* chains and ipsets of
// both families. Foreign state stays: a chain and an ipset of another
// tool, and with our proxy a virtual server on a non-Service address
// (upstream flushes the whole IPVS table, see below). The proxy started
// again reprograms everything.
func TestCleanupFlag(t *testing.T) {
	const (
		node       = "node1"
		foreignVIP = "192.0.2.60:80"
		foreignRS  = "192.0.2.61:8080"
		dummyLink  = "lcforeign0"
	)
	ctx := context.Background()
	app := newEchoApp(t, "e2e-cleanup", 2)
	cip := app.clusterIP()
	vip := cip + ":80"
	npVIP := fmt.Sprintf("%s:%d", labctl.NodeAddr(1), app.nodePort(v1.ProtocolTCP))

	// The proxy's state is there to begin with.
	if !strings.Contains(nodeOutput(t, node, "ip", "-o", "addr", "show", "dev", "kube-ipvs0"), " "+cip+"/32 ") {
		t.Fatalf("step: %s: %s is not bound to kube-ipvs0 before the cleanup", node, cip)
	}
	kubeSets := lcKubeSets(t, node)
	if !slices.Contains(kubeSets, "KUBE-CLUSTER-IP") {
		t.Fatalf("step: %s: no KUBE-CLUSTER-IP ipset before the cleanup: %v", node, kubeSets)
	}
	t.Logf("%s: KUBE-* ipsets before the cleanup: %v", node, kubeSets)

	t.Cleanup(func() {
		if running, _, err := lab.ProxyRunning(ctx, node); err == nil && running {
			return
		}
		if err := lab.RestartProxyWithArgs(ctx, node, nil); err != nil {
			t.Errorf("cleanup: starting the proxy on %s: %v", node, err)
		} else if err := lab.WaitProxyHealthy(ctx, node, 3*time.Minute); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := lab.StopProxy(ctx, node); err != nil {
		t.Fatalf("step: stopping the proxy on %s: %v", node, err)
	}

	// Foreign state: a virtual server on an address of another link, a
	// nat chain, an ipset.
	t.Cleanup(func() {
		_, _ = lab.Output(ctx, node, "ipvsadm", "-D", "-t", foreignVIP)
		_, _ = lab.Output(ctx, node, "ip", "link", "del", dummyLink)
		_, _ = lab.Output(ctx, node, "iptables", "-t", "nat", "-F", "FOREIGN")
		_, _ = lab.Output(ctx, node, "iptables", "-t", "nat", "-X", "FOREIGN")
		_, _ = lab.Output(ctx, node, "ipset", "destroy", "FOREIGN-SET")
	})
	foreignAddr := strings.Split(foreignVIP, ":")[0]
	for _, argv := range [][]string{
		{"ip", "link", "add", dummyLink, "type", "dummy"},
		{"ip", "addr", "add", foreignAddr + "/32", "dev", dummyLink},
		{"ip", "link", "set", dummyLink, "up"},
		{"ipvsadm", "-A", "-t", foreignVIP, "-s", "rr"},
		{"ipvsadm", "-a", "-t", foreignVIP, "-r", foreignRS, "-m", "-w", "2"},
		{"iptables", "-t", "nat", "-N", "FOREIGN"},
		{"iptables", "-t", "nat", "-A", "FOREIGN", "-s", "192.0.2.0/24", "-j", "RETURN"},
		{"ipset", "create", "FOREIGN-SET", "hash:ip"},
		{"ipset", "add", "FOREIGN-SET", "192.0.2.62"},
	} {
		nodeOutput(t, node, argv...)
	}
	foreignVS := []string{"-A -t " + foreignVIP + " -s rr", "-a -t " + foreignVIP + " -r " + foreignRS + " -m -w 2"}

	// Run it.
	var out bytes.Buffer
	argv := []string{lab.ProxyBinaryInVM(), "--cleanup", "--v=2"}
	code, err := lab.Exec(ctx, node, argv, &out, &out)
	t.Logf("%s: %q exited %d:\n%s", node, argv, code, out.String())
	// Upstream's --cleanup runs the iptables mode's cleanup before the
	// IPVS mode's (cmd/kube-proxy/app/server_linux.go, platformCleanup):
	// the former tries to delete KUBE-MARK-MASQ and KUBE-PROXY-FIREWALL
	// while the IPVS mode's rules still jump to them, fails with EBUSY
	// and makes the command exit 1 ("encountered an error while tearing
	// down rules"), although the IPVS cleanup that follows removes them.
	// The state checked below is what counts. Ours exits 0.
	upstreamBusy := lab.Proxy == "upstream" && code == 1 && err == nil &&
		strings.Contains(out.String(), "CHAIN_DEL failed (Device or resource busy)")
	if upstreamBusy {
		t.Logf("%s: upstream's cleanup exited 1 on chains still in use by its IPVS mode's rules (see above)", node)
	} else if err != nil || code != 0 {
		t.Fatalf("step: %q on %s: exit %d, err %v:\n%s", argv, node, code, err, out.String())
	}

	// IPVS: no virtual server of a Service is left.
	sn := nodeOutput(t, node, "ipvsadm", "-Sn")
	var left []string
	for _, l := range strings.Split(strings.TrimSpace(sn), "\n") {
		if l = strings.TrimSpace(l); l != "" && !slices.Contains(foreignVS, l) {
			left = append(left, l)
		}
	}
	if len(left) > 0 {
		t.Fatalf("step: %s: the cleanup left IPVS state of the proxy:\n%s", node, strings.Join(left, "\n"))
	}
	if lab.Proxy == "upstream" {
		// Upstream's cleanup flushes the whole IPVS table (ipvsadm -C),
		// another program's virtual servers included. Ours removes only
		// the virtual servers on its own addresses (kube-ipvs0's, and node
		// addresses with a port in the NodePort range).
		requireLines(t, node+": ipvsadm -Sn after upstream's cleanup (the foreign virtual server goes too)", sn, foreignVS, true)
	} else {
		requireLines(t, node+": ipvsadm -Sn after the cleanup (the foreign virtual server stays)", sn, foreignVS, false)
	}
	// kube-ipvs0 is gone, the foreign link stays.
	links := nodeOutput(t, node, "ip", "-o", "link", "show")
	if strings.Contains(links, " kube-ipvs0:") {
		t.Fatalf("step: %s: kube-ipvs0 is still there after the cleanup:\n%s", node, links)
	}
	if !strings.Contains(links, " "+dummyLink+":") {
		t.Fatalf("step: %s: the cleanup removed the foreign link %s:\n%s", node, dummyLink, links)
	}
	// No KUBE-* chain in either family; the foreign chain stays.
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		for _, table := range []string{"nat", "filter"} {
			dump := nodeOutput(t, node, save, "-t", table)
			for _, l := range strings.Split(dump, "\n") {
				if strings.HasPrefix(l, ":KUBE-") || strings.Contains(l, "-j KUBE-") {
					t.Fatalf("step: %s: %s -t %s still has %q after the cleanup:\n%s", node, save, table, l, dump)
				}
			}
			if save == "iptables-save" && table == "nat" {
				requireLines(t, node+": iptables-save -t nat after the cleanup (the foreign chain stays)", lcChainLines(dump),
					[]string{":FOREIGN", "-A FOREIGN -s 192.0.2.0/24 -j RETURN"}, false)
			}
		}
	}
	// No KUBE-* ipset; the foreign one stays with its member.
	if sets := lcKubeSets(t, node); len(sets) > 0 {
		var v4 []string
		for _, s := range sets {
			if !strings.HasPrefix(s, "KUBE-6-") {
				v4 = append(v4, s)
			}
		}
		// Upstream's cleanup destroys the IPv4 names of its sets only
		// (pkg/proxy/ipvs/cleanup.go: ipsetInfo), so its KUBE-6-* sets of
		// a dual-stack node stay; ours destroys both families'.
		if lab.Proxy != "upstream" || len(v4) > 0 {
			t.Fatalf("step: %s: ipsets left after the cleanup: %v", node, sets)
		}
		t.Logf("%s: upstream's cleanup left its IPv6 ipsets %v", node, sets)
	}
	requireLines(t, node+": ipset list FOREIGN-SET after the cleanup", nodeOutput(t, node, "ipset", "list", "FOREIGN-SET"), []string{"192.0.2.62"}, false)

	// Started again, the proxy reprograms everything.
	if err := lab.RestartProxyWithArgs(ctx, node, nil); err != nil {
		t.Fatalf("step: starting the proxy on %s again: %v", node, err)
	}
	if err := lab.WaitProxyHealthy(ctx, node, 3*time.Minute); err != nil {
		t.Fatalf("step: %v", err)
	}
	for proto, v := range map[string]string{"TCP": vip, "UDP": vip} {
		if err := lab.WaitIPVSRealServers(ctx, node, proto, v, app.podIPs(), propagateTimeout); err != nil {
			t.Fatalf("step: reprogramming after the cleanup: %v", err)
		}
	}
	if err := lab.WaitIPVSRealServers(ctx, node, "TCP", npVIP, app.podIPs(), propagateTimeout); err != nil {
		t.Fatalf("step: reprogramming the NodePort after the cleanup: %v", err)
	}
	waitLines(t, node, "ipset list KUBE-CLUSTER-IP", []string{"ipset", "list", "KUBE-CLUSTER-IP"}, []string{cip + ",tcp:80", cip + ",udp:80"}, false)
	lcEventually(t, node+": the ClusterIP bound to kube-ipvs0 again", propagateTimeout, func() (bool, string) {
		out, err := lab.Output(ctx, node, "ip", "-o", "addr", "show", "dev", "kube-ipvs0")
		return err == nil && strings.Contains(out, " "+cip+"/32 "), fmt.Sprintf("%s (err %v)", out, err)
	})
	lcEventually(t, node+": the KUBE-* ipsets back", propagateTimeout, func() (bool, string) {
		now := lcKubeSets(t, node)
		for _, s := range kubeSets {
			if !slices.Contains(now, s) {
				return false, fmt.Sprintf("ipsets %v, want %v", now, kubeSets)
			}
		}
		return true, ""
	})
	// The rules may come after the ipset entries (upstream writes them
	// last): wait for them.
	lcWaitRule(t, node, "nat", "KUBE-SERVICES", "--match-set KUBE-CLUSTER-IP dst,dst", "-j KUBE-MARK-MASQ", "! -s "+labctl.ClusterCIDR)
	lcWaitRule(t, node, "nat", "KUBE-POSTROUTING", "-j MASQUERADE")
	lcWaitRule(t, node, "nat", "PREROUTING", "-j KUBE-SERVICES")
	for _, proto := range []string{"tcp", "udp"} {
		requireAnsweredBy(t, "step: "+node+" "+proto+" -> ClusterIP after the cleanup and restart", request(t, node, proto, vip, 3*len(app.pods)), app.podNames())
	}
	requireAnsweredBy(t, "step: "+node+" -> NodePort after the cleanup and restart", request(t, node, "tcp", npVIP, 3*len(app.pods)), app.podNames())
	// The foreign state is still untouched.
	if lab.Proxy != "upstream" {
		requireLines(t, node+": ipvsadm -Sn after the restart (the foreign virtual server stays)", nodeOutput(t, node, "ipvsadm", "-Sn"), foreignVS, false)
	}
	requireLines(t, node+": ipset list FOREIGN-SET after the restart", nodeOutput(t, node, "ipset", "list", "FOREIGN-SET"), []string{"192.0.2.62"}, false)
}

// lcWaitRule waits until `iptables-save -t TABLE` on a node has a rule in
// chain that contains every fragment (requireRule, polled).
func lcWaitRule(t *testing.T, node, table, chain string, fragments ...string) {
	t.Helper()
	lcEventually(t, fmt.Sprintf("%s: a rule in %s (%s) with %q", node, chain, table, fragments), propagateTimeout, func() (bool, string) {
		out := nodeOutput(t, node, "iptables-save", "-t", table)
		for _, l := range strings.Split(out, "\n") {
			if !strings.HasPrefix(l, "-A "+chain+" ") {
				continue
			}
			all := true
			for _, f := range fragments {
				all = all && strings.Contains(l, f)
			}
			if all {
				return true, ""
			}
		}
		return false, "iptables-save -t " + table + ":\n" + out
	})
}

// lcKubeSets lists a node's KUBE-* ipsets.
func lcKubeSets(t *testing.T, node string) []string {
	t.Helper()
	var sets []string
	for _, s := range strings.Fields(nodeOutput(t, node, "ipset", "list", "-n")) {
		if strings.HasPrefix(s, "KUBE-") {
			sets = append(sets, s)
		}
	}
	sort.Strings(sets)
	return sets
}

// lcChainLines turns iptables-save's chain declarations (":NAME POLICY
// [p:b]") into ":NAME", keeping the other lines.
func lcChainLines(dump string) string {
	var b strings.Builder
	for _, l := range strings.Split(dump, "\n") {
		if strings.HasPrefix(l, ":") {
			l = strings.Fields(l)[0]
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}
