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

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// ---------------------------------------------------------------------------
// 4. Schedulers

// --ipvs-scheduler=wlc makes every virtual server -s wlc. With our proxy
// the annotation ipvs.kube-ipvs-proxy.io/scheduler picks the scheduler of
// one Service (sh here) and an unknown value (bogus) keeps the default
// scheduler and is logged; upstream kube-proxy knows no such annotation and
// ignores it.
func TestSchedulers(t *testing.T) {
	const annotation = "ipvs.kube-ipvs-proxy.io/scheduler"
	ctx := context.Background()
	app := newEchoApp(t, "e2e-sched", 2)
	// Another Service of the same pods, which keeps the global scheduler.
	other := labctl.EchoService(app.ns, "other")
	other.Spec.Selector = map[string]string{"app": app.name}
	other, err := cs.CoreV1().Services(app.ns).Create(ctx, other, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating Service other: %v", err)
	}
	waitVS(t, "TCP", other.Spec.ClusterIP+":80", app.podIPs())

	lcRestartProxies(t, lab.NodeNames(), []string{"--ipvs-scheduler=wlc"}, func() {
		lcWaitSchedulers(t, "cleanup: back to the default scheduler rr", "rr", nil)
	})
	// Runs before the default proxies are restored: no Service keeps an
	// annotation that would keep its virtual servers off rr.
	t.Cleanup(func() {
		lcUpdateService(t, app, "cleanup: removing the annotation", func(s *v1.Service) { delete(s.Annotations, annotation) })
	})
	lcWaitSchedulers(t, "--ipvs-scheduler=wlc: every virtual server is -s wlc", "wlc", nil)

	// requireAppSched checks that the app's virtual servers use want on
	// every node and every other virtual server wlc (waiting for ours,
	// checking at once for upstream, after a sentinel).
	requireAppSched := func(step, want string) {
		t.Helper()
		for i, n := range lab.NodeNames() {
			must := []string{"-t " + app.clusterIP() + ":80", "-u " + app.clusterIP() + ":80",
				fmt.Sprintf("-t %s:%d", labctl.NodeAddr(i+1), app.nodePort(v1.ProtocolTCP))}
			cond := func() (bool, string) {
				vss := lcVirtualServers(t, n)
				for _, k := range must {
					if vss[k] == nil {
						return false, fmt.Sprintf("no virtual server %s:\n%s", k, lcDescribe(vss))
					}
				}
				for k, vs := range vss {
					w := "wlc"
					if app.lcIsAppVS(k) {
						w = want
					}
					if vs.sched != w {
						return false, fmt.Sprintf("%q, want -s %s:\n%s", vs.line, w, lcDescribe(vss))
					}
				}
				return true, ""
			}
			if lab.Proxy == "upstream" {
				if ok, detail := cond(); !ok {
					t.Fatalf("step: %s: %s: %s", n, step, detail)
				}
				continue
			}
			lcEventually(t, n+": "+step, propagateTimeout, cond)
		}
	}

	lcUpdateService(t, app, "annotating the Service with scheduler sh", func(s *v1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[annotation] = "sh"
	})
	if lab.Proxy == "upstream" {
		// Upstream has no per-Service scheduler: the annotation changes
		// nothing. The sentinel proves the update was seen.
		lcSentinel(t, app.ns, "the proxies saw the sh annotation")
		requireAppSched("upstream ignores the scheduler annotation (sh)", "wlc")
	} else {
		requireAppSched("annotation sh: the Service's virtual servers are -s sh, the others -s wlc", "sh")
	}
	// Traffic still flows with sh (one client IP: one pod).
	for _, n := range lab.NodeNames() {
		request(t, n, "tcp", app.clusterIP()+":80", 4)
	}

	logSize := map[string]int{}
	for _, n := range lab.NodeNames() {
		logSize[n] = len(nodeOutput(t, "vm", "cat", labctl.ProxyLogPath(n)))
	}
	lcUpdateService(t, app, "annotating the Service with scheduler bogus", func(s *v1.Service) {
		s.Annotations[annotation] = "bogus"
	})
	if lab.Proxy == "upstream" {
		lcSentinel(t, app.ns, "the proxies saw the bogus annotation")
		requireAppSched("upstream ignores the scheduler annotation (bogus)", "wlc")
		return
	}
	// Ours: the default scheduler (--ipvs-scheduler) and a line in the log
	// that names the Service, the annotation and the bad value.
	requireAppSched("annotation bogus: the Service's virtual servers keep the default -s wlc", "wlc")
	for _, n := range lab.NodeNames() {
		var line string
		lcEventually(t, n+": the proxy logs the unknown scheduler", propagateTimeout, func() (bool, string) {
			log := nodeOutput(t, "vm", "cat", labctl.ProxyLogPath(n))
			if len(log) < logSize[n] {
				logSize[n] = 0
			}
			for _, l := range strings.Split(log[logSize[n]:], "\n") {
				if strings.Contains(l, app.ns+"/"+app.name) && strings.Contains(l, annotation) &&
					strings.Contains(l, "bogus") && strings.Contains(l, "wlc") {
					line = l
					return true, ""
				}
			}
			return false, "proxy log since the change:\n" + log[logSize[n]:]
		})
		t.Logf("%s: %s", n, line)
	}
	// And a Warning Event on the Service that `kubectl describe service`
	// shows (it selects Events by the Service's UID).
	lcEventually(t, "a Warning Event InvalidSchedulerAnnotation on the Service", propagateTimeout, func() (bool, string) {
		evs, err := cs.EventsV1().Events(app.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range evs.Items {
			if e.Type == v1.EventTypeWarning && e.Reason == "InvalidSchedulerAnnotation" && e.Regarding.Kind == "Service" &&
				e.Regarding.Name == app.name && e.Regarding.UID == app.svc.UID && strings.Contains(e.Note, "bogus") &&
				e.ReportingController == "kube-ipvs-proxy" {
				t.Logf("event: %s %s on %s/%s: %s (by %s/%s)", e.Type, e.Reason, e.Regarding.Kind, e.Regarding.Name, e.Note, e.ReportingController, e.ReportingInstance)
				return true, ""
			}
			seen = append(seen, fmt.Sprintf("%s %s %s/%s uid=%s %q by %s", e.Type, e.Reason, e.Regarding.Kind, e.Regarding.Name,
				e.Regarding.UID, e.Note, e.ReportingController))
		}
		return false, fmt.Sprintf("events in %s: %q", app.ns, seen)
	})
}

// ---------------------------------------------------------------------------
// 5. Options

// The IPVS options of the command line, on every node: --ipvs-strict-arp
// (arp_ignore=1, arp_announce=2), --masquerade-all (every ClusterIP request
// masqueraded: a pod sees the node as its client), --ipvs-exclude-cidrs (a
// virtual server made by hand on such an address survives full resyncs),
// the IPVS timeouts, and the IPVS sysctls any IPVS proxy sets.
func TestProxyOptions(t *testing.T) {
	const (
		excludedVIP  = "192.0.2.50:80"
		excludedRS   = "192.0.2.51:8080"
		dummyLink    = "lcexcl0"
		syncPeriod   = 5 * time.Second
		wantTimeouts = "900 30 90" // 15m 30s 90s
	)
	ctx := context.Background()
	app := newEchoApp(t, "e2e-options", 3)
	nodes := lab.NodeNames()

	// What the lab had, restored at the end (a proxy does not undo these
	// when it stops): strict ARP sysctls and IPVS timeouts.
	type before struct{ arpIgnore, arpAnnounce, timeouts string }
	orig := map[string]before{}
	for _, n := range nodes {
		orig[n] = before{lcSysctl(t, n, "net.ipv4.conf.all.arp_ignore"), lcSysctl(t, n, "net.ipv4.conf.all.arp_announce"), lcTimeouts(t, n)}
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			o := orig[n]
			_, err1 := lab.Output(ctx, n, "sysctl", "-w", "net.ipv4.conf.all.arp_ignore="+o.arpIgnore, "net.ipv4.conf.all.arp_announce="+o.arpAnnounce)
			_, err2 := lab.Output(ctx, n, append([]string{"ipvsadm", "--set"}, strings.Fields(o.timeouts)...)...)
			if err1 != nil || err2 != nil {
				t.Errorf("cleanup: restoring %s's sysctls and IPVS timeouts: %v %v", n, err1, err2)
			}
		}
	})

	flags := []string{"--ipvs-strict-arp", "--masquerade-all", "--ipvs-exclude-cidrs=192.0.2.0/24",
		"--ipvs-tcp-timeout=15m", "--ipvs-tcpfin-timeout=30s", "--ipvs-udp-timeout=90s",
		"--ipvs-sync-period=" + syncPeriod.String()}
	lcRestartProxies(t, nodes, flags, func() {
		// Back to the default: ClusterIP traffic from pods is not
		// masqueraded again (the rule has its ! -s CLUSTER_CIDR).
		for _, n := range nodes {
			lcEventually(t, n+": cleanup: KUBE-SERVICES masquerades only from outside the cluster again", propagateTimeout, func() (bool, string) {
				with, without := lcClusterIPMasqRules(t, n)
				return len(with) > 0 && len(without) == 0, fmt.Sprintf("rules with ! -s %q, without %q", with, without)
			})
		}
	})

	t.Run("sysctls", func(t *testing.T) {
		for _, n := range nodes {
			for name, want := range map[string]string{
				"net.ipv4.vs.conntrack":                 "1",
				"net.ipv4.vs.expire_nodest_conn":        "1",
				"net.ipv4.vs.expire_quiescent_template": "1",
				"net.ipv4.ip_forward":                   "1",
				// kube-proxy's conntrack defaults (per network namespace)
				"net.netfilter.nf_conntrack_tcp_timeout_established": "86400",
				"net.netfilter.nf_conntrack_tcp_timeout_close_wait":  "3600",
				// --ipvs-strict-arp
				"net.ipv4.conf.all.arp_ignore":   "1",
				"net.ipv4.conf.all.arp_announce": "2",
			} {
				if got := lcSysctl(t, n, name); got != want {
					t.Errorf("step: %s: %s = %s, want %s", n, name, got, want)
				}
			}
		}
	})

	t.Run("timeouts", func(t *testing.T) {
		for _, n := range nodes {
			if got := lcTimeouts(t, n); got != wantTimeouts {
				t.Errorf("step: %s: ipvsadm -L --timeout gives tcp tcpfin udp %q, want %q (--ipvs-tcp-timeout=15m --ipvs-tcpfin-timeout=30s --ipvs-udp-timeout=90s)", n, got, wantTimeouts)
			}
		}
	})

	t.Run("masquerade-all", func(t *testing.T) {
		for _, n := range nodes {
			lcEventually(t, n+": KUBE-SERVICES masquerades all ClusterIP traffic", propagateTimeout, func() (bool, string) {
				with, without := lcClusterIPMasqRules(t, n)
				return len(without) > 0 && len(with) == 0, fmt.Sprintf("rules with ! -s %q, without %q", with, without)
			})
		}
		// A pod's ClusterIP requests reach the backends with its node's
		// address as the source, whichever backend answers.
		for _, p := range lcAppPods(t, app) {
			addrs := lcNodeAddrs(t, p.Spec.NodeName)
			for _, proto := range []string{"tcp", "udp"} {
				answers := request(t, "pod/"+app.ns+"/"+p.Name, proto, app.clusterIP()+":80", 3*len(app.pods))
				requireAnsweredBy(t, fmt.Sprintf("step: %s %s -> ClusterIP", p.Name, proto), answers, app.podNames())
				for _, a := range answers {
					ap, err := netip.ParseAddrPort(a.client)
					if err != nil || !addrs[ap.Addr()] || ap.Addr().String() == p.Status.PodIP {
						t.Fatalf("step: %s (%s) on %s: %s saw the client %s, want an address of %s (masqueraded)", p.Name, p.Status.PodIP, p.Spec.NodeName, a.pod, a.client, p.Spec.NodeName)
					}
				}
			}
		}
	})

	t.Run("exclude-cidrs", func(t *testing.T) {
		const node = "node1"
		t.Cleanup(func() {
			_, _ = lab.Output(ctx, node, "ipvsadm", "-D", "-t", excludedVIP)
			_, _ = lab.Output(ctx, node, "ip", "link", "del", dummyLink)
		})
		addr := strings.Split(excludedVIP, ":")[0]
		nodeOutput(t, node, "ip", "link", "add", dummyLink, "type", "dummy")
		nodeOutput(t, node, "ip", "addr", "add", addr+"/32", "dev", dummyLink)
		nodeOutput(t, node, "ip", "link", "set", dummyLink, "up")
		nodeOutput(t, node, "ipvsadm", "-A", "-t", excludedVIP, "-s", "rr")
		nodeOutput(t, node, "ipvsadm", "-a", "-t", excludedVIP, "-r", excludedRS, "-m", "-w", "3")
		want := []string{"-A -t " + excludedVIP + " -s rr", "-a -t " + excludedVIP + " -r " + excludedRS + " -m -w 3"}
		// Periodic full resyncs (--ipvs-sync-period=5s), then a restart,
		// whose first sync is a full reconcile of the kernel.
		start, c0 := time.Now(), lcSyncCount(t, node)
		lcEventually(t, node+": two more syncs and two sync periods", 2*time.Minute, func() (bool, string) {
			c := lcSyncCount(t, node)
			return c >= c0+2 && time.Since(start) > 2*syncPeriod, fmt.Sprintf("syncs %d, were %d", c, c0)
		})
		requireLines(t, node+": ipvsadm -Sn after periodic resyncs", nodeOutput(t, node, "ipvsadm", "-Sn"), want, false)
		if err := lab.RestartProxyWithArgs(ctx, node, flags); err != nil {
			t.Fatalf("step: restarting the proxy on %s: %v", node, err)
		}
		if err := lab.WaitProxyHealthy(ctx, node, 3*time.Minute); err != nil {
			t.Fatalf("step: %v", err)
		}
		lcEventually(t, node+": two syncs of the restarted proxy", 2*time.Minute, func() (bool, string) {
			c := lcSyncCount(t, node)
			return c >= 2, fmt.Sprintf("syncs %d", c)
		})
		requireLines(t, node+": ipvsadm -Sn after a restart", nodeOutput(t, node, "ipvsadm", "-Sn"), want, false)
		// The proxy still serves its Services.
		requireAnsweredBy(t, "step: "+node+" -> ClusterIP after the resyncs", request(t, node, "tcp", app.clusterIP()+":80", 3*len(app.pods)), app.podNames())
	})
}

// lcTimeouts is "TCP TCPFIN UDP" (seconds) from `ipvsadm -L --timeout`.
func lcTimeouts(t *testing.T, node string) string {
	t.Helper()
	out := nodeOutput(t, node, "ipvsadm", "-L", "--timeout")
	// "Timeout (tcp tcpfin udp): 900 120 300"
	_, v, ok := strings.Cut(out, "):")
	if !ok {
		t.Fatalf("%s: unexpected ipvsadm -L --timeout output %q", node, out)
	}
	return strings.Join(strings.Fields(v), " ")
}

// lcClusterIPMasqRules returns the KUBE-SERVICES rules that mark traffic
// to KUBE-CLUSTER-IP for masquerade, with and without a source condition
// (! -s CLUSTER_CIDR).
func lcClusterIPMasqRules(t *testing.T, node string) (withSource, without []string) {
	t.Helper()
	for _, l := range strings.Split(nodeOutput(t, node, "iptables-save", "-t", "nat"), "\n") {
		if !strings.HasPrefix(l, "-A KUBE-SERVICES ") || !strings.Contains(l, "--match-set KUBE-CLUSTER-IP dst,dst") || !strings.Contains(l, "-j KUBE-MARK-MASQ") {
			continue
		}
		if strings.Contains(l, "! -s ") {
			withSource = append(withSource, l)
		} else {
			without = append(without, l)
		}
	}
	return withSource, without
}
