//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"
)

// Helpers of the isolation cases (prefixed iso): one bad Service, an
// unreachable API server or a held xtables lock must never hurt the rest
// of the node.

// isoProbe is one HTTP check a watcher repeats: curl at target must get
// status want from url.
type isoProbe struct {
	name, target, url string
	want              int
}

// isoHealthProbes are /livez and /healthz of the proxy of each node.
func isoHealthProbes(nodes ...string) []isoProbe {
	if len(nodes) == 0 {
		nodes = lab.NodeNames()
	}
	var ps []isoProbe
	for _, n := range nodes {
		for _, path := range []string{"/livez", "/healthz"} {
			ps = append(ps, isoProbe{name: n + " " + path, target: n, url: "http://127.0.0.1:10256" + path, want: 200})
		}
	}
	return ps
}

// isoHealthCheckProbes are the health check node port of a Service as a
// load balancer probes it from outside: 200 on the nodes in local, 503 on
// the others.
func isoHealthCheckProbes(port int32, local ...string) []isoProbe {
	var ps []isoProbe
	for _, n := range lab.NodeNames() {
		want := 503
		for _, l := range local {
			if l == n {
				want = 200
			}
		}
		ps = append(ps, isoProbe{name: fmt.Sprintf("%s health check node port %d", n, port), target: "vm",
			url: fmt.Sprintf("http://%s:%d/", extNodeAddr(n), port), want: want})
	}
	return ps
}

// isoHTTP runs curl at target (bounded by timeout) and returns the status
// code (0 when no answer came) and curl's total time.
func isoHTTP(target, url string, timeout time.Duration) (int, time.Duration, error) {
	out, err := lab.Output(context.Background(), target, "curl", "-s", "-o", "/dev/null", "-m",
		strconv.FormatFloat(timeout.Seconds(), 'f', 1, 64), "-w", "%{http_code} %{time_total}", url)
	f := strings.Fields(out)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("curl at %s: output %q: %v", target, out, err)
	}
	code, _ := strconv.Atoi(f[0])
	secs, _ := strconv.ParseFloat(f[1], 64)
	return code, time.Duration(secs * float64(time.Second)), err
}

// isoProbesPass checks every probe once and describes the ones that fail.
func isoProbesPass(probes []isoProbe) []string {
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		fails []string
	)
	for _, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, err := isoHTTP(p.target, p.url, 3*time.Second)
			if code != p.want {
				mu.Lock()
				fails = append(fails, fmt.Sprintf("%s: %d, want %d (%v)", p.name, code, p.want, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Strings(fails)
	return fails
}

// isoWaitProbes waits until every probe passes at once.
func isoWaitProbes(t *testing.T, step string, probes []isoProbe) {
	t.Helper()
	lcEventually(t, step, propagateTimeout, func() (bool, string) {
		fails := isoProbesPass(probes)
		return len(fails) == 0, strings.Join(fails, "; ")
	})
}

// isoWatch repeats probes every interval until finished and keeps every
// failure with its time.
type isoWatch struct {
	stop, done chan struct{}
	start      time.Time

	mu     sync.Mutex
	rounds int
	fails  []string
}

// isoStartWatch starts repeating probes; it never fails the test itself
// (it runs outside the test's goroutine): see finish.
func isoStartWatch(probes []isoProbe, interval time.Duration) *isoWatch {
	w := &isoWatch{stop: make(chan struct{}), done: make(chan struct{}), start: time.Now()}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			fails := isoProbesPass(probes)
			w.mu.Lock()
			w.rounds++
			for _, f := range fails {
				w.fails = append(w.fails, fmt.Sprintf("+%.1fs %s", time.Since(w.start).Seconds(), f))
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// finish stops the watch and returns the rounds it made and its failures.
func (w *isoWatch) finish() (rounds int, fails []string) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rounds, w.fails
}

// isoMetric reads an unlabelled metric of a node's proxy (127.0.0.1:10249);
// found is false when the proxy does not export it.
func isoMetric(t *testing.T, node, name string) (value float64, found bool) {
	t.Helper()
	out := nodeOutput(t, node, "curl", "-sf", "-m", "5", "http://127.0.0.1:10249/metrics")
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// isoEvents lists the Warning Events with reason on Service ns/name.
func isoEvents(t *testing.T, ns, name, reason string) []eventsv1.Event {
	t.Helper()
	evs, err := cs.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("step: listing the Events of %s: %v", ns, err)
	}
	var out []eventsv1.Event
	for _, e := range evs.Items {
		if e.Type == v1.EventTypeWarning && e.Reason == reason && e.Regarding.Kind == "Service" && e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// isoDescribeEvents renders Events for logs: name, series count, note.
func isoDescribeEvents(evs []eventsv1.Event) string {
	var lines []string
	for _, e := range evs {
		n := int32(1)
		if e.Series != nil {
			n = e.Series.Count
		}
		lines = append(lines, fmt.Sprintf("%s (%s, x%d): %s", e.Name, e.ReportingInstance, n, e.Note))
	}
	return strings.Join(lines, "\n")
}

// isoEventsStayAtMost watches the Events with reason on a Service for
// window (the proxies write them asynchronously, batched) and fails as
// soon as there are more than max objects; it returns the last count.
func isoEventsStayAtMost(t *testing.T, ns, name, reason string, max int, window time.Duration) int {
	t.Helper()
	end := time.Now().Add(window)
	for {
		evs := isoEvents(t, ns, name, reason)
		if len(evs) > max {
			t.Fatalf("step: %d Events %s on %s/%s, want at most %d (one per node):\n%s", len(evs), reason, ns, name, max, isoDescribeEvents(evs))
		}
		if time.Now().After(end) {
			return len(evs)
		}
		time.Sleep(time.Second)
	}
}

// isoUpdateService changes a Service (retrying on conflicts).
func isoUpdateService(t *testing.T, ns, name, step string, change func(*v1.Service)) *v1.Service {
	t.Helper()
	ctx := context.Background()
	var out *v1.Service
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(s)
		out, err = cs.CoreV1().Services(ns).Update(ctx, s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("step: %s: updating Service %s/%s: %v", step, ns, name, err)
	}
	return out
}

// isoSetIngress writes a Service's status.loadBalancer.ingress, as a
// cloud provider's controller would (the lab runs none).
func isoSetIngress(t *testing.T, ns, name, ip string) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip}}
		_, err = cs.CoreV1().Services(ns).UpdateStatus(ctx, s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("step: writing the load-balancer status of %s/%s: %v", ns, name, err)
	}
}

// isoWaitVS waits until a node's virtual server (flag -t or -u, addr
// "IP:PORT") exists with scheduler sched and exactly the real servers
// "IP:8080" of ips at a positive weight.
func isoWaitVS(t *testing.T, node, flag, addr, sched string, ips []string) {
	t.Helper()
	want := make([]string, 0, len(ips))
	for _, ip := range ips {
		want = append(want, ip+":8080")
	}
	sort.Strings(want)
	start := time.Now()
	lcEventually(t, fmt.Sprintf("%s: virtual server %s %s -s %s with %v", node, flag, addr, sched, want), propagateTimeout, func() (bool, string) {
		vs := lcVirtualServers(t, node)[flag+" "+addr]
		if vs == nil {
			return false, "absent; ipvsadm -Sn:\n" + nodeOutput(t, node, "ipvsadm", "-Sn")
		}
		var got []string
		for rs, w := range vs.rs {
			if w > 0 {
				got = append(got, rs)
			}
		}
		sort.Strings(got)
		return vs.sched == sched && strings.Join(got, ",") == strings.Join(want, ","),
			fmt.Sprintf("%s with real servers %v", vs.line, got)
	})
	t.Logf("%s: %s %s -s %s with %v (waited %.1fs)", node, flag, addr, sched, want, time.Since(start).Seconds())
}

// isoPodsByNode maps each node to one running echo pod (target
// pod/NS/NAME) of the given namespaces.
func isoPodsByNode(t *testing.T, nss ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, ns := range nss {
		pods, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			t.Fatalf("step: listing the pods of %s: %v", ns, err)
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && p.Status.PodIP != "" && out[p.Spec.NodeName] == "" {
				out[p.Spec.NodeName] = "pod/" + ns + "/" + p.Name
			}
		}
	}
	return out
}

// isoReachFromEverywhere checks that a Service answers, only from the
// wanted pods, from every vantage point: a pod on each node (its own
// node's IPVS), each node, and the external client through each node's
// NodePort.
func isoReachFromEverywhere(t *testing.T, what string, pods map[string]string, cip string, nodePort int32, want []string) {
	t.Helper()
	for _, n := range lab.NodeNames() {
		if p := pods[n]; p != "" {
			extAnswered(t, fmt.Sprintf("%s: %s (on %s) -> %s:80", what, p, n, cip), p, cip+":80", 4, want)
		} else {
			t.Logf("%s: no pod on %s to send from", what, n)
		}
		extAnswered(t, fmt.Sprintf("%s: %s -> %s:80", what, n, cip), n, cip+":80", 4, want)
		if nodePort != 0 {
			np := fmt.Sprintf("%s:%d", extNodeAddr(n), nodePort)
			extAnswered(t, fmt.Sprintf("%s: external client -> NodePort %s", what, np), "vm", np, 4, want)
		}
	}
}

// isoSyncPeriod is the --ipvs-sync-period the lab runs the proxy with
// (the proxy's default, 30 s, unless PROXY_ARGS sets it).
func isoSyncPeriod() time.Duration {
	p := 30 * time.Second
	for _, a := range lab.ProxyArgs {
		if v, ok := strings.CutPrefix(a, "--ipvs-sync-period="); ok {
			if d, err := time.ParseDuration(v); err == nil {
				p = d
			}
		}
	}
	return p
}

// isoRequireDefaultProxies restarts, with the lab's default command line,
// the proxy of any node an earlier case left with other flags.
func isoRequireDefaultProxies(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, n := range lab.NodeNames() {
		running, argv, err := lab.ProxyRunning(ctx, n)
		if err != nil {
			t.Fatalf("step: the proxy daemon of %s: %v", n, err)
		}
		if running && lab.ProxyHasDefaultArgs(n, argv) {
			continue
		}
		if err := lab.RestartProxyWithArgs(ctx, n, nil); err != nil {
			t.Fatalf("step: restoring the default proxy on %s: %v", n, err)
		}
		if err := lab.WaitProxyHealthy(ctx, n, 3*time.Minute); err != nil {
			t.Fatalf("step: %v", err)
		}
	}
}

// isoLivenessProbe is the livenessProbe of the DaemonSet in
// manifests/daemonset.yaml, as the kubelet would run it.
func isoLivenessProbe(t *testing.T) *v1.Probe {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(lab.Repo, "manifests", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---") {
		var ds appsv1.DaemonSet
		if err := yaml.Unmarshal([]byte(doc), &ds); err != nil || ds.Kind != "DaemonSet" {
			continue
		}
		for _, c := range ds.Spec.Template.Spec.Containers {
			if p := c.LivenessProbe; p != nil && p.HTTPGet != nil {
				return p
			}
		}
	}
	t.Fatal("manifests/daemonset.yaml has no DaemonSet with an HTTP livenessProbe")
	return nil
}
