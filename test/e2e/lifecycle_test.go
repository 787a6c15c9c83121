//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// The cases of this file follow a Service and its endpoints through their
// life and the proxy through its options: session affinity switched on and
// off, endpoints that terminate while connections are open, UDP flows whose
// backend is replaced, schedulers, the IPVS options of the command line and
// --cleanup. Each runs against PROXY=ours and PROXY=upstream; where the two
// differ on purpose the case branches on lab.Proxy and says why.

// ---------------------------------------------------------------------------
// Helpers (prefixed lc, for lifecycle).

// lcNewApp is newEchoApp with a pod grace period (0: the Deployment's
// default of 5 s) and a change to the Service before it is created.
func lcNewApp(t *testing.T, ns string, replicas int, grace int64, svcChange func(*v1.Service)) *echoApp {
	t.Helper()
	ctx := context.Background()
	reportOnFailure(t)
	if err := labctl.EnsureNamespace(ctx, cs, ns); err != nil {
		t.Fatalf("step: creating namespace %s: %v", ns, err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	a := &echoApp{ns: ns, name: "echo"}
	d := labctl.EchoDeployment(ns, a.name, int32(replicas))
	if grace > 0 {
		d.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To(grace)
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("step: creating the echo Deployment: %v", err)
	}
	svc := labctl.EchoService(ns, a.name)
	if svcChange != nil {
		svcChange(svc)
	}
	created, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating the echo Service: %v", err)
	}
	a.svc = created
	a.waitPods(t, replicas)
	a.waitProgrammed(t)
	return a
}

// lcEventually polls cond (every 250 ms) until it holds; after timeout the
// test fails naming the step, with cond's last description of what it saw.
func lcEventually(t *testing.T, step string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("step: %s: not reached within %s: %s", step, timeout, detail)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// lcUpdateService changes the app's Service (retrying on conflicts) and
// keeps the updated object.
func lcUpdateService(t *testing.T, a *echoApp, step string, change func(*v1.Service)) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := cs.CoreV1().Services(a.ns).Get(ctx, a.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(svc)
		updated, err := cs.CoreV1().Services(a.ns).Update(ctx, svc, metav1.UpdateOptions{})
		if err == nil {
			a.svc = updated
		}
		return err
	})
	if err != nil {
		t.Fatalf("step: %s: updating Service %s/%s: %v", step, a.ns, a.name, err)
	}
}

// lcScale sets the Deployment's replicas.
func lcScale(t *testing.T, a *echoApp, n int) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := cs.AppsV1().Deployments(a.ns).Get(ctx, a.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		d.Spec.Replicas = ptr.To(int32(n))
		_, err = cs.AppsV1().Deployments(a.ns).Update(ctx, d, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("step: scaling %s/%s to %d: %v", a.ns, a.name, n, err)
	}
}

// lcVS is one virtual server of `ipvsadm -Sn`.
type lcVS struct {
	line    string         // the -A line
	sched   string         // -s
	persist string         // -p, "" when not persistent
	rs      map[string]int // real server "IP:PORT" -> weight
}

// lcVirtualServers reads a node's `ipvsadm -Sn`, keyed by "-t ADDR:PORT"
// (-u for UDP, --sctp-service for SCTP).
func lcVirtualServers(t *testing.T, node string) map[string]*lcVS {
	t.Helper()
	out := nodeOutput(t, node, "ipvsadm", "-Sn")
	vss := map[string]*lcVS{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		key := f[1] + " " + f[2]
		switch f[0] {
		case "-A":
			vs := &lcVS{line: strings.TrimSpace(l), rs: map[string]int{}}
			for i := 3; i+1 < len(f); i++ {
				switch f[i] {
				case "-s":
					vs.sched = f[i+1]
				case "-p":
					vs.persist = f[i+1]
				}
			}
			vss[key] = vs
		case "-a":
			vs := vss[key]
			if vs == nil || len(f) < 5 || f[3] != "-r" {
				continue
			}
			w := 0
			for i := 5; i+1 < len(f); i++ {
				if f[i] == "-w" {
					w, _ = strconv.Atoi(f[i+1])
				}
			}
			vs.rs[f[4]] = w
		}
	}
	return vss
}

// lcIsAppVS says whether an lcVirtualServers key is one of the app's
// virtual servers: its ClusterIP:80 or a node address with its NodePort.
func (a *echoApp) lcIsAppVS(key string) bool {
	f := strings.Fields(key)
	if len(f) != 2 {
		return false
	}
	if f[1] == a.clusterIP()+":80" {
		return true
	}
	proto := map[string]v1.Protocol{"-t": v1.ProtocolTCP, "-u": v1.ProtocolUDP}[f[0]]
	np := a.nodePort(proto)
	return np != 0 && strings.HasSuffix(f[1], fmt.Sprintf(":%d", np))
}

// lcDescribe renders virtual servers for failure messages.
func lcDescribe(vss map[string]*lcVS) string {
	var lines []string
	for _, vs := range vss {
		lines = append(lines, vs.line)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// lcConn is one real server of `ipvsadm -Ln -t VIP` with its counters.
type lcConn struct{ weight, active, inactive int }

// lcConns reads the connection counters of the real servers (by IP) of
// one virtual server on a node (proto "-t" or "-u").
func lcConns(t *testing.T, node, proto, vip string) map[string]lcConn {
	t.Helper()
	out := nodeOutput(t, node, "ipvsadm", "-Ln", proto, vip)
	m := map[string]lcConn{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || f[0] != "->" {
			continue
		}
		ap, err := netip.ParseAddrPort(f[1])
		if err != nil {
			continue // the header line
		}
		var c lcConn
		c.weight, _ = strconv.Atoi(f[3])
		c.active, _ = strconv.Atoi(f[4])
		c.inactive, _ = strconv.Atoi(f[5])
		m[ap.Addr().String()] = c
	}
	return m
}

// lcAppPods lists the app's pods.
func lcAppPods(t *testing.T, a *echoApp) []v1.Pod {
	t.Helper()
	pods, err := cs.CoreV1().Pods(a.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + a.name})
	if err != nil {
		t.Fatalf("listing the pods of %s/%s: %v", a.ns, a.name, err)
	}
	return pods.Items
}

// lcConds are the conditions of one endpoint in the EndpointSlices.
type lcConds struct{ ready, serving, terminating bool }

func (c lcConds) String() string {
	return fmt.Sprintf("ready=%v serving=%v terminating=%v", c.ready, c.serving, c.terminating)
}

// lcEndpointConds reads the app's endpoints by IP.
func lcEndpointConds(t *testing.T, a *echoApp) map[string]lcConds {
	t.Helper()
	list, err := cs.DiscoveryV1().EndpointSlices(a.ns).List(context.Background(),
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + a.name})
	if err != nil {
		t.Fatalf("listing the EndpointSlices of %s/%s: %v", a.ns, a.name, err)
	}
	m := map[string]lcConds{}
	for _, s := range list.Items {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, e := range s.Endpoints {
			c := lcConds{
				ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
				serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
				terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
			}
			for _, addr := range e.Addresses {
				m[addr] = c
			}
		}
	}
	return m
}

// lcSentinel proves that every node's proxy has handled the API changes
// made before it: it creates a Service without endpoints and waits until
// every node has its virtual server, then deletes it. The proxies see the
// API's changes in order and program the whole state they know, so a
// change that shows nothing in the kernel (an ignored annotation, an
// endpoint change that keeps the same real servers) has been handled too.
func lcSentinel(t *testing.T, ns, step string) {
	t.Helper()
	ctx := context.Background()
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "sentinel-"},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: %s: creating a sentinel Service: %v", step, err)
	}
	for _, n := range lab.NodeNames() {
		if err := lab.WaitIPVSRealServers(ctx, n, "TCP", svc.Spec.ClusterIP+":80", []string{}, propagateTimeout); err != nil {
			t.Fatalf("step: %s: the sentinel Service %s never reached %s: %v", step, svc.Name, n, err)
		}
	}
	if err := cs.CoreV1().Services(ns).Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("step: %s: deleting the sentinel Service: %v", step, err)
	}
}

// lcRestartProxies restarts the proxy of each node with the lab's flags
// plus extra and waits until it is healthy. When the test ends (failed or
// not) the lab's default command line is restored on those nodes, then
// settled (if not nil) waits until the kernel is back in its default
// state, so that the next cases start from the lab as `lab up` made it.
func lcRestartProxies(t *testing.T, nodes []string, extra []string, settled func()) {
	t.Helper()
	ctx := context.Background()
	t.Cleanup(func() {
		for _, n := range nodes {
			if err := lab.RestartProxyWithArgs(ctx, n, nil); err != nil {
				t.Errorf("cleanup: restoring the default proxy on %s: %v", n, err)
				continue
			}
			if err := lab.WaitProxyHealthy(ctx, n, 3*time.Minute); err != nil {
				t.Errorf("cleanup: the default proxy on %s: %v", n, err)
			}
		}
		if settled != nil {
			settled()
		}
	})
	for _, n := range nodes {
		if err := lab.RestartProxyWithArgs(ctx, n, extra); err != nil {
			t.Fatalf("step: restarting the proxy on %s with %q: %v", n, extra, err)
		}
		if err := lab.WaitProxyHealthy(ctx, n, 3*time.Minute); err != nil {
			t.Fatalf("step: the proxy on %s with %q: %v", n, extra, err)
		}
		t.Logf("%s: proxy restarted with %q", n, extra)
	}
}

// lcWaitSchedulers waits until every virtual server on every node uses
// want, except those skip selects (which may be nil).
func lcWaitSchedulers(t *testing.T, step, want string, skip func(key string) bool) {
	t.Helper()
	for _, n := range lab.NodeNames() {
		lcEventually(t, n+": "+step, propagateTimeout, func() (bool, string) {
			vss := lcVirtualServers(t, n)
			var bad []string
			for key, vs := range vss {
				if (skip == nil || !skip(key)) && vs.sched != want {
					bad = append(bad, vs.line)
				}
			}
			sort.Strings(bad)
			return len(vss) > 0 && len(bad) == 0, fmt.Sprintf("virtual servers not -s %s:\n%s\nipvsadm -Sn:\n%s", want, strings.Join(bad, "\n"), lcDescribe(vss))
		})
	}
}

// lcSysctl reads a sysctl in a node's namespace.
func lcSysctl(t *testing.T, node, name string) string {
	t.Helper()
	return strings.TrimSpace(nodeOutput(t, node, "sysctl", "-n", name))
}

// lcNodeAddrs lists the addresses of a node's namespace.
func lcNodeAddrs(t *testing.T, node string) map[netip.Addr]bool {
	t.Helper()
	out := nodeOutput(t, node, "ip", "-o", "addr", "show")
	m := map[netip.Addr]bool{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" || f[i] == "inet6" {
				if p, err := netip.ParsePrefix(f[i+1]); err == nil {
					m[p.Addr()] = true
				}
			}
		}
	}
	return m
}

// lcSyncCount is the number of syncs the proxy on a node has done
// (kubeproxy_sync_proxy_rules_duration_seconds_count, the largest of its
// per-family series), -1 when the metric is not there yet.
func lcSyncCount(t *testing.T, node string) int {
	t.Helper()
	out, err := lab.Output(context.Background(), node, "curl", "-sf", "-m", "5", "http://127.0.0.1:10249/metrics")
	if err != nil {
		return -1
	}
	n := -1
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "kubeproxy_sync_proxy_rules_duration_seconds_count") {
			continue
		}
		f := strings.Fields(l)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && int(v) > n {
			n = int(v)
		}
	}
	return n
}

// lcLines collects a command's output lines with the time each arrived.
type lcLines struct {
	mu    sync.Mutex
	buf   []byte
	lines []lcLine
}

type lcLine struct {
	at   time.Time
	text string
}

func (l *lcLines) Write(p []byte) (int, error) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, lcLine{at: now, text: string(l.buf[:i])})
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

func (l *lcLines) snapshot() []lcLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

// lcPodOf is the pod that answered an echo line, "" for an error.
func lcPodOf(line string) string {
	f := strings.Fields(line)
	if len(f) < 2 || f[0] == "ERR" {
		return ""
	}
	return f[0]
}

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

// ---------------------------------------------------------------------------
// 3. UDP conntrack cleanup

// A UDP client with a fixed source port talks to a single-pod Service; the
// pod is deleted and replaced. Within 2 s after the old backend leaves the
// IPVS table, the same client (same source port, so the same conntrack
// entry if nobody deleted it) reaches the new backend, and the conntrack
// table of the node points at the new backend only.
func TestUDPConntrackCleanup(t *testing.T) {
	const (
		node       = "node1"
		sourcePort = "40000"
	)
	// A grace period long enough for the replacement to be ready before
	// the old pod stops: the old backend then leaves IPVS because the new
	// one is ready, not because it stopped answering.
	app := lcNewApp(t, "e2e-udpct", 1, 30, nil)
	vip := app.clusterIP() + ":80"
	oldIP, oldPod := app.podIPs()[0], app.podNames()[0]
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	// About a minute of requests, one every 100 ms, from the same port.
	var lines lcLines
	clientDone := make(chan error, 1)
	go func() {
		code, err := lab.Exec(ctx, node, []string{echoBin, "client", "--proto", "udp", "--addr", vip,
			"--source-port", sourcePort, "--count", "600", "--interval", "100ms", "--timeout", "500ms"}, &lines, io.Discard)
		if err == nil && code != 0 {
			err = fmt.Errorf("exit %d", code) // some requests failed: expected around the switch
		}
		clientDone <- err
	}()
	lcEventually(t, "the UDP client reaches the old pod", 30*time.Second, func() (bool, string) {
		for _, l := range lines.snapshot() {
			if lcPodOf(l.text) == oldPod {
				return true, ""
			}
		}
		return false, fmt.Sprintf("client output %v", lines.snapshot())
	})

	if err := cs.CoreV1().Pods(app.ns).Delete(ctx, oldPod, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("step: deleting pod %s: %v", oldPod, err)
	}
	var gone time.Time
	var newIP string
	lcEventually(t, node+": the old backend leaves the UDP virtual server", podsReadyTimeout, func() (bool, string) {
		rs, _, err := lab.IPVSVirtualServer(ctx, node, "UDP", vip)
		if err != nil {
			return false, err.Error()
		}
		var ips []string
		for _, r := range rs {
			ips = append(ips, r.Addr.Addr().String())
		}
		if slices.Contains(ips, oldIP) || len(ips) != 1 {
			return false, fmt.Sprintf("real servers %v", ips)
		}
		gone, newIP = time.Now(), ips[0]
		return true, ""
	})
	newPod := ""
	for _, p := range lcAppPods(t, app) {
		if p.Status.PodIP == newIP {
			newPod = p.Name
		}
	}
	if newPod == "" {
		t.Fatalf("step: no pod has the new backend's address %s:\n%s", newIP, lab.PodReport(ctx, app.ns))
	}
	t.Logf("%s: %s (%s) replaced %s (%s) in IPVS", node, newPod, newIP, oldPod, oldIP)

	// The same client reaches the new backend within 2 s.
	var reached time.Time
	lcEventually(t, "the same client reaches the new backend", 2*time.Second+500*time.Millisecond, func() (bool, string) {
		for _, l := range lines.snapshot() {
			if lcPodOf(l.text) == newPod {
				reached = l.at
				return true, ""
			}
		}
		select {
		case err := <-clientDone:
			t.Fatalf("step: the UDP client ended early (%v): %v", err, lines.snapshot())
		default:
		}
		return false, "no answer from " + newPod
	})
	if d := reached.Sub(gone); d > 2*time.Second {
		t.Fatalf("step: the client reached the new backend %.2fs after the old one left IPVS, want at most 2s", d.Seconds())
	} else {
		t.Logf("the client (source port %s) reached %s %.2fs after %s left IPVS", sourcePort, newPod, d.Seconds(), oldIP)
	}

	// The conntrack entry of the client's flow points at the new backend,
	// and none at the old one.
	lcEventually(t, node+": the conntrack entry of the client's flow points at the new backend", 10*time.Second, func() (bool, string) {
		out := nodeOutput(t, node, "conntrack", "-L", "-p", "udp", "--orig-port-src", sourcePort)
		if strings.Contains(out, "src="+oldIP+" ") {
			return false, "an entry still points at the old backend:\n" + out
		}
		return strings.Contains(out, "src="+newIP+" "), "conntrack -L:\n" + out
	})
	// And it stays there: a few seconds later the client still reaches the
	// new backend only.
	lcEventually(t, "the client keeps reaching the new backend", 10*time.Second, func() (bool, string) {
		n := 0
		for _, l := range lines.snapshot() {
			if l.at.After(gone.Add(3*time.Second)) && lcPodOf(l.text) == newPod {
				n++
			}
		}
		return n >= 10, fmt.Sprintf("%d answers from %s", n, newPod)
	})
	cancel()
	var late []string
	for _, l := range lines.snapshot() {
		if l.at.After(gone.Add(2*time.Second)) && lcPodOf(l.text) == oldPod {
			late = append(late, l.text)
		}
	}
	if len(late) > 0 {
		t.Fatalf("step: the old backend still answered the client more than 2 s after it left IPVS: %q", late)
	}
}

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
