//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

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
