//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// The lifecycle cases follow a Service and its endpoints through their
// life and the proxy through its options: session affinity switched on and
// off and endpoints that terminate while connections are open (this file),
// UDP flows whose backend is replaced (conntrack_test.go), schedulers and
// the IPVS options of the command line (options_test.go) and --cleanup
// (cleanup_test.go); their helpers, prefixed lc, are in
// lifecycle_helpers_test.go. Each runs against PROXY=ours and
// PROXY=upstream; where the two differ on purpose the case branches on
// lab.Proxy and says why.

// ---------------------------------------------------------------------------
// 1. sessionAffinity: ClientIP

// sessionAffinity ClientIP makes the Service's virtual servers persistent
// (-p with the affinity timeout: the API's default of 10800 s, or the
// configured timeoutSeconds), so every request from one node lands on one
// pod. Switching affinity off at runtime makes them plain again (requests
// spread over every pod), and switching it on again works, with the new
// timeout. Kernel: ipvsadm -Sn of the ClusterIP and NodePort virtual
// servers, TCP and UDP.
func TestSessionAffinityClientIP(t *testing.T) {
	app := lcNewApp(t, "e2e-affinity", 3, 0, func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	})
	if c := app.svc.Spec.SessionAffinityConfig; c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil || *c.ClientIP.TimeoutSeconds != 10800 {
		t.Fatalf("step: the API server did not default the affinity timeout to 10800 s: %+v", app.svc.Spec.SessionAffinityConfig)
	}
	vip := app.clusterIP() + ":80"

	// waitPersistence waits until every virtual server of the Service on
	// every node (ClusterIP and this node's NodePorts, TCP and UDP) has
	// -p want ("" for none).
	waitPersistence := func(step, want string) {
		t.Helper()
		for i, n := range lab.NodeNames() {
			must := []string{"-t " + vip, "-u " + vip,
				fmt.Sprintf("-t %s:%d", labctl.NodeAddr(i+1), app.nodePort(v1.ProtocolTCP)),
				fmt.Sprintf("-u %s:%d", labctl.NodeAddr(i+1), app.nodePort(v1.ProtocolUDP))}
			lcEventually(t, n+": "+step, propagateTimeout, func() (bool, string) {
				vss := lcVirtualServers(t, n)
				for _, k := range must {
					if vss[k] == nil {
						return false, fmt.Sprintf("no virtual server %s:\n%s", k, lcDescribe(vss))
					}
				}
				for k, vs := range vss {
					if app.lcIsAppVS(k) && vs.persist != want {
						return false, fmt.Sprintf("%q has -p %q, want %q:\n%s", vs.line, vs.persist, want, lcDescribe(vss))
					}
				}
				return true, ""
			})
		}
	}
	// requireSticky checks that all requests of one node land on one pod.
	requireSticky := func(step string) {
		t.Helper()
		for _, n := range lab.NodeNames() {
			for _, proto := range []string{"tcp", "udp"} {
				answers := request(t, n, proto, vip, 8)
				seen := map[string]int{}
				for _, a := range answers {
					seen[a.pod]++
				}
				if len(seen) != 1 {
					t.Fatalf("step: %s: %s %s requests from %s went to %v, want one pod", step, proto, vip, n, seen)
				}
				t.Logf("%s: %s %s from %s: all 8 answered by %v", step, proto, vip, n, seen)
			}
		}
	}

	waitPersistence("affinity on: persistent virtual servers (-p 10800)", "10800")
	requireSticky("affinity on (10800 s)")

	lcUpdateService(t, app, "switching affinity off", func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityNone
		s.Spec.SessionAffinityConfig = nil
	})
	waitPersistence("affinity off: no persistence", "")
	for _, n := range lab.NodeNames() {
		for _, proto := range []string{"tcp", "udp"} {
			answers := request(t, n, proto, vip, 3*len(app.pods))
			requireAnsweredBy(t, fmt.Sprintf("step: affinity off: %s %s -> %s", n, proto, vip), answers, app.podNames())
		}
	}

	lcUpdateService(t, app, "switching affinity on again, 600 s", func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	})
	waitPersistence("affinity on again: persistent virtual servers (-p 600)", "600")
	requireSticky("affinity on again (600 s)")
}

// ---------------------------------------------------------------------------
// 2. Terminating endpoints and graceful termination

// A long-lived TCP connection to a pod survives while that pod terminates:
// after a scale-down its real server goes to weight 0 on the node that
// carries the connection (new connections go to the remaining pods only)
// and is deleted once the connection is gone or the pod stops. UDP real
// servers are deleted at once, never drained. When every pod terminates
// (scale to 0 with a long grace period), the serving terminating endpoints
// are still used, as a fallback.
func TestTerminatingEndpointsAndGracefulTermination(t *testing.T) {
	const (
		grace       = 60 // s, the pods' grace period: they serve that long after deletion
		holdSeconds = 50 // s, each long-lived connection: less than the grace period and than our 60 s drain bound
		node        = "node1"
	)
	app := lcNewApp(t, "e2e-graceful", 3, grace, nil)
	vip := app.clusterIP() + ":80"
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	// Step 1: from node1, one long-lived connection to every pod (three
	// connections in a row on an rr virtual server), and a UDP flow to
	// every pod, so that the TCP and the UDP real servers have connections.
	type holdResult struct {
		out string
		err error
	}
	holds := make(chan holdResult, len(app.pods))
	holdStart := time.Now()
	for range app.pods {
		go func() {
			out, err := lab.Output(ctx, node, echoBin, "client", "--proto", "tcp", "--addr", vip,
				"--path", fmt.Sprintf("/hold?seconds=%d", holdSeconds), "--timeout", fmt.Sprintf("%ds", holdSeconds+30))
			holds <- holdResult{out, err}
		}()
	}
	lcEventually(t, "a long-lived connection to every pod (ActiveConn 1 on each real server of "+node+")", 30*time.Second, func() (bool, string) {
		c := lcConns(t, node, "-t", vip)
		for _, ip := range app.podIPs() {
			if c[ip].active < 1 {
				return false, fmt.Sprintf("counters %+v", c)
			}
		}
		return true, ""
	})
	requireAnsweredBy(t, "step: a UDP flow to every pod", request(t, node, "udp", vip, len(app.pods)), app.podNames())

	// Step 2: scale down by one; one pod terminates.
	lcScale(t, app, len(app.pods)-1)
	var goneIP, goneName string
	lcEventually(t, "a pod terminates after the scale-down", podsReadyTimeout, func() (bool, string) {
		for _, p := range lcAppPods(t, app) {
			if p.DeletionTimestamp != nil {
				goneIP, goneName = p.Status.PodIP, p.Name
				return goneIP != "", ""
			}
		}
		return false, lab.PodReport(ctx, app.ns)
	})
	var remainingIPs, remainingNames []string
	for ip, name := range app.pods {
		if ip != goneIP {
			remainingIPs = append(remainingIPs, ip)
			remainingNames = append(remainingNames, name)
		}
	}
	sort.Strings(remainingIPs)
	sort.Strings(remainingNames)
	t.Logf("terminating: %s (%s); remaining: %v", goneName, goneIP, remainingNames)
	lcEventually(t, "the terminating pod's endpoint is serving and terminating", propagateTimeout, func() (bool, string) {
		c, ok := lcEndpointConds(t, app)[goneIP]
		return ok && !c.ready && c.serving && c.terminating, fmt.Sprintf("endpoint %s: %v (present %v)", goneIP, c, ok)
	})

	// The TCP real server drains at weight 0 on node1, where the connection
	// is; the UDP one is deleted at once, on every node.
	lcEventually(t, node+": the terminating pod's TCP real server drains at weight 0", propagateTimeout, func() (bool, string) {
		vs := lcVirtualServers(t, node)["-t "+vip]
		if vs == nil {
			return false, "no virtual server"
		}
		w, ok := vs.rs[goneIP+":8080"]
		if !ok || w != 0 {
			return false, fmt.Sprintf("real servers %v, want %s at weight 0", vs.rs, goneIP)
		}
		for _, ip := range remainingIPs {
			if vs.rs[ip+":8080"] < 1 {
				return false, fmt.Sprintf("real servers %v, want %v at weight 1", vs.rs, remainingIPs)
			}
		}
		return true, ""
	})
	for _, n := range lab.NodeNames() {
		lcEventually(t, n+": the terminating pod's UDP real server is deleted at once (no draining)", propagateTimeout, func() (bool, string) {
			vs := lcVirtualServers(t, n)["-u "+vip]
			if vs == nil {
				return false, "no virtual server"
			}
			if w, ok := vs.rs[goneIP+":8080"]; ok && w == 0 {
				t.Fatalf("step: %s: the UDP real server %s drains at weight 0 (%v); UDP real servers must be deleted at once", n, goneIP, vs.rs)
			}
			var got []string
			for rs := range vs.rs {
				got = append(got, strings.TrimSuffix(rs, ":8080"))
			}
			sort.Strings(got)
			return slices.Equal(got, remainingIPs), fmt.Sprintf("real servers %v, want %v", vs.rs, remainingIPs)
		})
	}
	waitVS(t, "TCP", vip, remainingIPs)

	// Step 3: new connections go to the remaining pods only, while the
	// long-lived one goes on.
	for _, n := range lab.NodeNames() {
		for _, proto := range []string{"tcp", "udp"} {
			answers := request(t, n, proto, vip, 3*len(remainingIPs))
			requireAnsweredBy(t, fmt.Sprintf("step: new %s connections from %s while %s terminates", proto, n, goneName), answers, remainingNames)
		}
	}
	if len(holds) > 0 {
		t.Fatalf("step: a long-lived connection ended early (%.0fs after it started, before the checks of its pod's termination were done; it should last %d s)",
			time.Since(holdStart).Seconds(), holdSeconds)
	}
	if c := lcConns(t, node, "-t", vip)[goneIP]; c.weight != 0 || c.active < 1 {
		t.Fatalf("step: %s: the terminating pod's real server should be at weight 0 with its connection active: %+v", node, c)
	}
	t.Logf("checks while %s terminates done %.0fs after the long-lived connections started", goneName, time.Since(holdStart).Seconds())

	// Step 4: every long-lived connection lasted its full time, the one
	// to the terminating pod included.
	var heldBy []string
	for range app.pods {
		var r holdResult
		select {
		case r = <-holds:
		case <-time.After(time.Duration(holdSeconds+60) * time.Second):
			t.Fatalf("step: the long-lived connections did not end")
		}
		lines := strings.Split(strings.TrimSpace(r.out), "\n")
		last := strings.Fields(lines[len(lines)-1])
		if r.err != nil || len(lines) != holdSeconds || len(last) < 3 || last[2] != fmt.Sprintf("%d/%d", holdSeconds, holdSeconds) {
			t.Fatalf("step: a long-lived connection broke: err %v, output:\n%s", r.err, r.out)
		}
		heldBy = append(heldBy, last[0])
	}
	sort.Strings(heldBy)
	if !slices.Contains(heldBy, goneName) {
		t.Fatalf("step: no long-lived connection was to the terminating pod %s (they were to %v)", goneName, heldBy)
	}
	connEnd := time.Now()
	t.Logf("the long-lived connections to %v lasted %d s, %s's across its termination", heldBy, holdSeconds, goneName)

	// Step 5: the drained real server goes once its connection is gone
	// (IPVS keeps a closed connection in TIME_WAIT for up to 2 min) or the
	// pod stops. Upstream checks its draining real servers once a minute.
	lcEventually(t, node+": the drained real server is deleted", 4*time.Minute, func() (bool, string) {
		vs := lcVirtualServers(t, node)["-t "+vip]
		if vs == nil {
			return false, "no virtual server"
		}
		_, there := vs.rs[goneIP+":8080"]
		return !there, fmt.Sprintf("real servers %v; counters %+v", vs.rs, lcConns(t, node, "-t", vip))
	})
	t.Logf("%s: the drained real server %s was deleted %.0fs after the connections ended", node, goneIP, time.Since(connEnd).Seconds())
	lcEventually(t, "the terminated pod is gone", 2*time.Minute, func() (bool, string) {
		_, err := cs.CoreV1().Pods(app.ns).Get(ctx, goneName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprintf("pod %s: err %v", goneName, err)
	})

	// Step 6: scale to 0: every pod terminates and keeps serving through
	// its grace period, and the proxies use these serving terminating
	// endpoints as a fallback.
	lcScale(t, app, 0)
	lcEventually(t, "every endpoint is serving and terminating", propagateTimeout, func() (bool, string) {
		conds := lcEndpointConds(t, app)
		for _, ip := range remainingIPs {
			if c, ok := conds[ip]; !ok || c.ready || !c.serving || !c.terminating {
				return false, fmt.Sprintf("endpoints %v", conds)
			}
		}
		return true, ""
	})
	fallbackAt := time.Now()
	// The real servers stay the same: make sure the proxies saw the change.
	lcSentinel(t, app.ns, "the proxies saw every endpoint terminate")
	waitVS(t, "TCP", vip, remainingIPs)
	waitVS(t, "UDP", vip, remainingIPs)
	for _, n := range lab.NodeNames() {
		for _, proto := range []string{"tcp", "udp"} {
			answers := request(t, n, proto, vip, 3*len(remainingIPs))
			requireAnsweredBy(t, fmt.Sprintf("step: %s %s requests from %s with every endpoint terminating", proto, vip, n), answers, remainingNames)
		}
	}
	if el := time.Since(fallbackAt); el > grace*time.Second {
		t.Fatalf("step: the fallback checks took %s, longer than the pods' grace period of %d s: they may not have run while the pods terminated", el, grace)
	}
	// Once the pods stop, nothing takes new connections.
	waitVS(t, "TCP", vip, []string{})
	waitVS(t, "UDP", vip, []string{})
}
