//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// builtinDuplicates returns the rules that appear more than once in a
// built-in chain (a jump inserted twice by two proxies).
func builtinDuplicates(t *testing.T, node string) []string {
	t.Helper()
	var dups []string
	for _, table := range []string{"nat", "filter"} {
		seen := map[string]int{}
		for _, l := range strings.Split(nodeOutput(t, node, "iptables-save", "-t", table), "\n") {
			if !strings.HasPrefix(l, "-A ") {
				continue
			}
			chain := strings.Fields(l)[1]
			if strings.HasPrefix(chain, "KUBE-") {
				continue
			}
			seen[l]++
		}
		for l, n := range seen {
			if n > 1 {
				dups = append(dups, fmt.Sprintf("%s: %dx %s", table, n, l))
			}
		}
	}
	return dups
}

// Switching a live node between upstream kube-proxy (IPVS mode) and ours,
// both ways, with no cleanup in between: the other proxy takes over the
// state the first left (same virtual servers, ipset and chain names), then
// the proxy under test takes it back while traffic flows. No request or
// long-lived connection fails, the Service's state ends as it began, and
// no rule is duplicated in a built-in chain.
func TestSwitchBetweenProxies(t *testing.T) {
	const (
		node = "node1"
		hold = 40 * time.Second
		long = 1
	)
	ctx := context.Background()
	app := newEchoApp(t, "e2e-switch", 2)
	pod := "pod/" + app.ns + "/" + app.podNames()[0]
	vip := app.clusterIP() + ":80"
	before := settledState(t, app, node)
	restoreProxyAtEnd(t, node)

	l := startLoad(t, node, pod, vip, long, hold)
	time.Sleep(2 * time.Second)
	var steps []string
	switchTo := func(name string, start func() error) {
		t.Helper()
		began := time.Now()
		if err := lab.StopProxy(ctx, node); err != nil {
			t.Fatalf("step: stopping the proxy on %s: %v", node, err)
		}
		if err := start(); err != nil {
			t.Fatalf("step: starting %s on %s: %v", name, node, err)
		}
		if err := lab.WaitProxyHealthy(ctx, node, 3*time.Minute); err != nil {
			t.Fatalf("step: %s on %s: %v", name, node, err)
		}
		// Both proxies program the same virtual servers and set entries;
		// their chains may differ in detail.
		lcEventually(t, node+": "+name+" keeps the Service's virtual servers and set entries", propagateTimeout, func() (bool, string) {
			now := serviceLines(app.ownedState(t, node))
			return now == serviceLines(before), "before:\n" + before + "\nnow:\n" + now
		})
		steps = append(steps, fmt.Sprintf("%s healthy after %.1fs", name, time.Since(began).Seconds()))
		time.Sleep(5 * time.Second) // traffic through the new proxy's state
	}
	other, mine := lab.OtherProxy(), lab.Proxy
	switchTo(other, func() error { return lab.StartOtherProxy(ctx, node) })
	switchTo(mine, func() error { return lab.StartProxy(ctx, node) })
	summary, failures := l.finish()
	addFaultRow(faultRow{fmt.Sprintf("switch %s -> %s -> %s on a live node", mine, other, mine), loadDesc(long), summary, strings.Join(steps, ", ")})
	if failures > 0 {
		t.Errorf("%d requests or connections failed while switching proxies: %s", failures, summary)
	}
	lcEventually(t, node+": back to "+mine+", the state is the one it began with", propagateTimeout, func() (bool, string) {
		now := app.ownedState(t, node)
		return now == before, "before:\n" + before + "\nnow:\n" + now
	})
	if dups := builtinDuplicates(t, node); len(dups) > 0 {
		t.Errorf("rules duplicated in built-in chains after the switches:\n%s", strings.Join(dups, "\n"))
	}
}

// serviceLines keeps the virtual server and set entry lines of ownedState,
// without the NodePort virtual servers on pod gateway addresses (10.244.*):
// both proxies serve NodePorts on every host address, and the gateways
// come and go with the pods, so they are left out of the comparison.
func serviceLines(state string) string {
	var b strings.Builder
	for _, l := range strings.Split(state, "\n") {
		if f := strings.Fields(l); len(f) >= 3 && (f[0] == "-A" || f[0] == "-a") && strings.HasPrefix(f[2], "10.244.") {
			continue
		}
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, "-a ") || strings.HasPrefix(l, "add ") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// From upstream kube-proxy in iptables mode to ours on a live node (PROXY
// =ours only: the other direction is a kube-proxy mode change). iptables
// mode sends ClusterIP traffic through its own KUBE-SERVICES rules; ours
// rewrites that chain (the names are shared) and takes over with IPVS,
// with no request lost. iptables mode's own chains (KUBE-SVC-*, KUBE-SEP-*)
// stay behind, unused; the README says how to remove them.
func TestSwitchFromIptablesMode(t *testing.T) {
	if lab.Proxy != "ours" {
		t.Log("PROXY=upstream: moving from iptables mode to upstream's IPVS mode is a kube-proxy mode change, not this project's")
		return
	}
	const (
		node = "node1"
		hold = 30 * time.Second
		long = 1
	)
	ctx := context.Background()
	app := newEchoApp(t, "e2e-switch-iptables", 2)
	pod := "pod/" + app.ns + "/" + app.podNames()[0]
	vip := app.clusterIP() + ":80"
	before := serviceLines(app.ownedState(t, node))
	restoreProxyAtEnd(t, node)

	// node1 runs kube-proxy in iptables mode first (on top of what ours
	// left, as a cluster that ran it would have).
	if err := lab.StopProxy(ctx, node); err != nil {
		t.Fatalf("step: stopping the proxy on %s: %v", node, err)
	}
	if err := lab.StartOtherProxy(ctx, node, "--proxy-mode=iptables"); err != nil {
		t.Fatalf("step: starting kube-proxy in iptables mode: %v", err)
	}
	if err := lab.WaitProxyHealthy(ctx, node, 3*time.Minute); err != nil {
		t.Fatalf("step: kube-proxy in iptables mode: %v", err)
	}
	lcEventually(t, node+": kube-proxy in iptables mode has its KUBE-SVC chain for the Service", propagateTimeout, func() (bool, string) {
		out := nodeOutput(t, node, "iptables-save", "-t", "nat")
		return strings.Contains(out, app.clusterIP()+"/32") && strings.Contains(out, "KUBE-SVC-"), out
	})
	// Only iptables mode's rules should answer: the IPVS virtual servers
	// ours left stay, but kube-proxy's DNAT in PREROUTING/OUTPUT comes first.
	// iptables mode picks an endpoint at random (not round robin): 4
	// connections all went to one of the two pods one time in 8; with 24
	// that is one in 8 million.
	requireAnsweredBy(t, "step: node1 -> "+vip+" through iptables mode", request(t, node, "tcp", vip, 24), app.podNames())

	l := startLoad(t, node, pod, vip, long, hold)
	time.Sleep(3 * time.Second)
	began := time.Now()
	if err := lab.StopProxy(ctx, node); err != nil {
		t.Fatalf("step: stopping kube-proxy: %v", err)
	}
	if err := lab.StartProxy(ctx, node); err != nil {
		t.Fatalf("step: starting ours: %v", err)
	}
	if err := lab.WaitProxyHealthy(ctx, node, 3*time.Minute); err != nil {
		t.Fatalf("step: ours after iptables mode: %v", err)
	}
	lcEventually(t, node+": ours programs the Service again", propagateTimeout, func() (bool, string) {
		now := serviceLines(app.ownedState(t, node))
		return now == before, "before:\n" + before + "\nnow:\n" + now
	})
	healthy := time.Since(began)
	time.Sleep(5 * time.Second)
	summary, failures := l.finish()
	addFaultRow(faultRow{"switch upstream iptables mode -> ours on a live node", loadDesc(long), summary, fmt.Sprintf("ours healthy after %.1fs", healthy.Seconds())})
	if failures > 0 {
		t.Errorf("%d requests or connections failed while switching from iptables mode: %s", failures, summary)
	}
	if dups := builtinDuplicates(t, node); len(dups) > 0 {
		t.Errorf("rules duplicated in built-in chains after the switch:\n%s", strings.Join(dups, "\n"))
	}
	for _, l := range strings.Split(nodeOutput(t, node, "iptables-save", "-t", "nat"), "\n") {
		if strings.HasPrefix(l, "-A KUBE-SERVICES ") && strings.Contains(l, "KUBE-SVC-") {
			t.Errorf("step: iptables mode's jump is still in KUBE-SERVICES: %s", l)
		}
	}
}

// restoreProxyAtEnd makes sure that, whatever happened, node ends the test
// with the proxy under test and the lab's command line.
func restoreProxyAtEnd(t *testing.T, node string) {
	t.Cleanup(func() {
		ctx := context.Background()
		if running, argv, err := lab.ProxyRunning(ctx, node); err == nil && running && lab.ProxyHasDefaultArgs(node, argv) {
			return
		}
		if err := lab.RestartProxyWithArgs(ctx, node, nil); err != nil {
			t.Errorf("cleanup: restoring the proxy under test on %s: %v", node, err)
		} else if err := lab.WaitProxyHealthy(ctx, node, 3*time.Minute); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}
