//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The reliability cases inject faults around the proxy while traffic
// flows, and count what fails: new TCP connections (one every 100 ms from
// the node and from a pod), a UDP stream from a fixed source port (one
// datagram every 100 ms) and long-lived TCP connections. Each case adds
// rows to a table the suite prints at the end (faultTable).

// faultRow is one line of the reliability table.
type faultRow struct {
	scenario string
	load     string
	failures string
	recovery string
}

var (
	faultMu   sync.Mutex
	faultRows []faultRow
)

func addFaultRow(r faultRow) {
	faultMu.Lock()
	defer faultMu.Unlock()
	faultRows = append(faultRows, r)
}

// printFaultTable prints the rows of the reliability cases that ran.
func printFaultTable() {
	faultMu.Lock()
	defer faultMu.Unlock()
	if len(faultRows) == 0 {
		return
	}
	fmt.Printf("\ne2e: reliability (PROXY=%s)\n", lab.Proxy)
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "scenario\tload\tfailures\ttime to recover")
	for _, r := range faultRows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.scenario, r.load, r.failures, r.recovery)
	}
	w.Flush()
	fmt.Println()
}

// load is traffic to a Service while a fault happens.
type load struct {
	t    *testing.T
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	ok, fail map[string]int
	errs     []string
	start    time.Time
}

// startLoad sends traffic to vip from node and from pod until stopped:
// TCP requests and UDP datagrams in chunks of 50 (one every 100 ms each,
// each bounded by 5 s: a pod starved of CPU in the emulated VM may be slow),
// and `long` long-lived TCP connections held for hold.
func startLoad(t *testing.T, node, pod, vip string, long int, hold time.Duration) *load {
	t.Helper()
	// The pod's namespace by name: the load must not need the API server.
	pod, err := lab.PodTarget(context.Background(), pod)
	if err != nil {
		t.Fatalf("step: resolving %s: %v", pod, err)
	}
	l := &load{t: t, stop: make(chan struct{}), ok: map[string]int{}, fail: map[string]int{}, start: time.Now()}
	loop := func(kind, target string, argv ...string) {
		defer l.wg.Done()
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			out, err := lab.Output(context.Background(), target, append([]string{echoBin, "client", "--addr", vip}, argv...)...)
			l.count(kind, out, err)
		}
	}
	chunk := []string{"--count", "50", "--interval", "100ms", "--timeout", "5s"}
	l.wg.Add(3)
	go loop("tcp node", node, append([]string{"--proto", "tcp"}, chunk...)...)
	go loop("tcp pod", pod, append([]string{"--proto", "tcp"}, chunk...)...)
	go loop("udp stream", node, append([]string{"--proto", "udp", "--source-port", "40123"}, chunk...)...)
	for range long {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			out, err := lab.Output(context.Background(), node, echoBin, "client", "--addr", vip, "--proto", "tcp",
				"--path", fmt.Sprintf("/hold?seconds=%d", int(hold.Seconds())), "--timeout", (hold + 30*time.Second).String())
			// One connection, whatever the server streamed on it.
			if err == nil && !strings.Contains(out, "ERR") {
				out = "ok"
			}
			l.count("long-lived tcp", out, err)
		}()
	}
	return l
}

func (l *load) count(kind, out string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch {
		case line == "":
		case strings.HasPrefix(line, "ERR"):
			l.fail[kind]++
			l.errs = append(l.errs, fmt.Sprintf("%s +%.1fs: %s", kind, time.Since(l.start).Seconds(), line))
		default:
			l.ok[kind]++
		}
	}
	if err != nil && !strings.Contains(out, "ERR") {
		l.fail[kind]++
		l.errs = append(l.errs, fmt.Sprintf("%s +%.1fs: client: %v", kind, time.Since(l.start).Seconds(), err))
	}
}

// finish stops the load, waits for the clients (long-lived connections
// run their full time) and returns a summary; every failure is logged.
func (l *load) finish() (summary string, failures int) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	kinds := make([]string, 0, len(l.ok)+len(l.fail))
	seen := map[string]bool{}
	for k := range l.ok {
		kinds, seen[k] = append(kinds, k), true
	}
	for k := range l.fail {
		if !seen[k] {
			kinds = append(kinds, k)
		}
	}
	sort.Strings(kinds)
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s %d/%d", k, l.fail[k], l.ok[k]+l.fail[k]))
		failures += l.fail[k]
	}
	for _, e := range l.errs {
		l.t.Logf("failed: %s", e)
	}
	return strings.Join(parts, ", "), failures
}

// loadDesc describes the traffic of startLoad.
func loadDesc(long int) string {
	return fmt.Sprintf("10 TCP/s node + 10 TCP/s pod + 10 UDP/s, %d long-lived TCP", long)
}

// ownedState is what a node's proxy owns for the app, as text: the app's
// virtual servers, our ipset entries of its addresses, and every rule of
// our chains.
func (a *echoApp) ownedState(t *testing.T, node string) string {
	t.Helper()
	var b strings.Builder
	for _, l := range a.ipvsLines(nodeOutput(t, node, "ipvsadm", "-Sn")) {
		b.WriteString(l + "\n")
	}
	for _, l := range strings.Split(nodeOutput(t, node, "ipset", "save"), "\n") {
		if strings.HasPrefix(l, "create KUBE-") || (strings.HasPrefix(l, "add KUBE-") && strings.Contains(l, a.clusterIP())) {
			b.WriteString(l + "\n")
		}
	}
	for _, table := range []string{"nat", "filter"} {
		for _, l := range strings.Split(nodeOutput(t, node, "iptables-save", "-t", table), "\n") {
			if strings.HasPrefix(l, "-A KUBE-") || strings.HasPrefix(l, ":KUBE-") {
				if i := strings.Index(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
					l = l[:i] // counters
				}
				b.WriteString(table + " " + l + "\n")
			}
		}
	}
	return b.String()
}

// settledState is the app's ownedState on node once no namespace of an
// earlier case is left (their Services, load-balancer rules included, are
// gone from the cluster) and two reads a second apart agree (the proxy has
// synced their removal). A snapshot taken earlier would hold another
// case's objects that go away later, and never match again.
func settledState(t *testing.T, app *echoApp, node string) string {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	lcEventually(t, "the namespaces of earlier cases are gone", 3*time.Minute, func() (bool, string) {
		nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var left []string
		for _, ns := range nss.Items {
			if strings.HasPrefix(ns.Name, "e2e-") && ns.Name != app.ns {
				left = append(left, ns.Name+" ("+string(ns.Status.Phase)+")")
			}
		}
		return len(left) == 0, "left: " + strings.Join(left, ", ")
	})
	prev := app.ownedState(t, node)
	var cur string
	lcEventually(t, node+": the owned state settles", propagateTimeout, func() (bool, string) {
		time.Sleep(time.Second)
		cur = app.ownedState(t, node)
		same := cur == prev
		prev = cur
		return same, "still changing; last read:\n" + cur
	})
	t.Logf("%s: state settled after %.1fs", node, time.Since(start).Seconds())
	return cur
}

// 20 restarts of the proxy on node1, SIGTERM and SIGKILL in turn, some of
// them right after a Service change (in the middle of its sync), while
// traffic flows through node1's IPVS: no request fails, no long-lived
// connection breaks, and the state is the same afterwards.
func TestRestartsUnderLoad(t *testing.T) {
	const (
		node = "node1"
		long = 2
	)
	// The soak by hand: E2E_SOAK_RESTARTS=500 make e2e (about 7 s each).
	restarts := 20
	if v, err := strconv.Atoi(os.Getenv("E2E_SOAK_RESTARTS")); err == nil && v > 0 {
		restarts = v
	}
	hold := min(60*time.Second, time.Duration(restarts)*3*time.Second)
	ctx := context.Background()
	app := newEchoApp(t, "e2e-restarts", 2)
	vip := app.clusterIP() + ":80"
	pod := ""
	for _, p := range lcAppPods(t, app) {
		if p.Spec.NodeName == node {
			pod = "pod/" + app.ns + "/" + p.Name
		}
	}
	if pod == "" {
		pod = "pod/" + app.ns + "/" + app.podNames()[0]
	}
	before := settledState(t, app, node)

	l := startLoad(t, node, pod, vip, long, hold)
	time.Sleep(2 * time.Second)
	start := time.Now()
	var downs []time.Duration
	for i := range restarts {
		kill := i%2 == 1
		if i%4 == 1 {
			// A change right before the kill: the proxy is syncing it.
			s, err := cs.CoreV1().Services(app.ns).Create(ctx, &v1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("churn-%d", i)},
				Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}, Selector: map[string]string{"app": app.name}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("step: creating a Service before restart %d: %v", i, err)
			}
			defer cs.CoreV1().Services(app.ns).Delete(context.Background(), s.Name, metav1.DeleteOptions{})
			time.Sleep(300 * time.Millisecond)
		}
		down := time.Now()
		var err error
		if kill {
			err = lab.KillProxy(ctx, node)
		} else {
			err = lab.StopProxy(ctx, node)
		}
		if err != nil {
			t.Fatalf("step: stopping the proxy (restart %d, SIGKILL %v): %v", i, kill, err)
		}
		if err := lab.StartProxy(ctx, node); err != nil {
			t.Fatalf("step: starting the proxy (restart %d): %v", i, err)
		}
		if err := lab.WaitProxyHealthy(ctx, node, 2*time.Minute); err != nil {
			t.Fatalf("step: restart %d: %v", i, err)
		}
		downs = append(downs, time.Since(down))
	}
	elapsed := time.Since(start)
	// The churn Services go; then the state must be what it was.
	for i := range restarts {
		if i%4 == 1 {
			_ = cs.CoreV1().Services(app.ns).Delete(ctx, fmt.Sprintf("churn-%d", i), metav1.DeleteOptions{})
		}
	}
	summary, failures := l.finish()
	sort.Slice(downs, func(i, j int) bool { return downs[i] < downs[j] })
	recovery := fmt.Sprintf("restart to healthy: median %.1fs, max %.1fs", downs[len(downs)/2].Seconds(), downs[len(downs)-1].Seconds())
	addFaultRow(faultRow{fmt.Sprintf("%d restarts (SIGTERM/SIGKILL) in %.0fs", restarts, elapsed.Seconds()), loadDesc(long), summary, recovery})
	t.Logf("%d restarts in %.0fs; %s; %s", restarts, elapsed.Seconds(), summary, recovery)
	if failures > 0 {
		t.Errorf("%d requests or connections failed across the restarts: %s", failures, summary)
	}
	lcEventually(t, node+": the state after the restarts is the state before", propagateTimeout, func() (bool, string) {
		after := app.ownedState(t, node)
		return after == before, "before:\n" + before + "\nafter:\n" + after
	})
}

// healthStatus is the status code and body of /healthz or /livez on a node.
func healthStatus(t *testing.T, node, path string) (int, map[string]any) {
	t.Helper()
	out := nodeOutput(t, node, "curl", "-s", "-m", "3", "-w", "\n%{http_code}", "http://127.0.0.1:10256"+path)
	body, code, _ := strings.Cut(strings.TrimSpace(out), "\n")
	var m map[string]any
	_ = json.Unmarshal([]byte(body), &m)
	var c int
	fmt.Sscan(code, &c)
	return c, m
}

// The API server goes away for 60 s, and the proxy of node1 restarts while
// it is away: the Services keep working from the kernel state; /livez stays
// healthy (the kubelet must not restart every proxy), and with ours
// /healthz fails once the API server has been unreachable for
// --healthz-api-server-timeout (20 s here). After the API server is back
// the proxies catch up: a scale change reaches every node.
func TestAPIServerOutage(t *testing.T) {
	const (
		outage = 60 * time.Second
		hold   = 80 * time.Second
		long   = 1
	)
	ctx := context.Background()
	app := lcNewApp(t, "e2e-apiserver-outage", 2, 0, nil)
	var extra []string
	if lab.Proxy != "upstream" {
		extra = []string{"--healthz-api-server-timeout=20s"}
	}
	lcRestartProxies(t, lab.NodeNames(), extra, nil)
	app.waitProgrammed(t)
	pod := "pod/" + app.ns + "/" + app.podNames()[0]
	vip := app.clusterIP() + ":80"

	l := startLoad(t, "node1", pod, vip, long, hold)
	time.Sleep(2 * time.Second)
	if err := lab.StopAPIServer(); err != nil {
		t.Fatalf("step: stopping the API server: %v", err)
	}
	apiDown := time.Now()
	restarted := false
	defer func() {
		if !restarted {
			_ = lab.StartAPIServer(context.Background())
		}
	}()

	// After 25 s: /livez healthy everywhere; ours fails /healthz.
	time.Sleep(25 * time.Second)
	for _, n := range lab.NodeNames() {
		if code, body := healthStatus(t, n, "/livez"); code != 200 {
			t.Errorf("step: %s: /livez %d during the API outage, want 200: %v", n, code, body)
		}
		code, body := healthStatus(t, n, "/healthz")
		t.Logf("%s: /healthz %d during the API outage: %v", n, code, body)
		if lab.Proxy != "upstream" && (code != 503 || body["apiServerReachable"] != false) {
			t.Errorf("step: %s: /healthz %d (%v) 25 s into the API outage, want 503 with apiServerReachable false", n, code, body)
		}
	}
	// A restart while the API server is away: the new proxy cannot list
	// anything, and must leave the kernel state alone.
	if err := lab.StopProxy(ctx, "node1"); err != nil {
		t.Fatalf("step: stopping node1's proxy: %v", err)
	}
	if err := lab.RestartProxyWithArgs(ctx, "node1", extra); err != nil {
		t.Fatalf("step: starting node1's proxy during the outage: %v", err)
	}
	time.Sleep(time.Until(apiDown.Add(outage)))
	if err := lab.StartAPIServer(ctx); err != nil {
		t.Fatalf("step: starting the API server again: %v", err)
	}
	restarted = true
	apiUp := time.Now()
	t.Logf("the API server was down for %.0fs", apiUp.Sub(apiDown).Seconds())

	var recovered []string
	for _, n := range lab.NodeNames() {
		if err := lab.WaitProxyHealthy(ctx, n, 3*time.Minute); err != nil {
			t.Fatalf("step: %s after the outage: %v", n, err)
		}
		recovered = append(recovered, fmt.Sprintf("%s /healthz 200 after %.1fs", n, time.Since(apiUp).Seconds()))
	}
	lcScale(t, app, 3)
	app.waitProgrammed(t)
	caughtUp := time.Since(apiUp)
	summary, failures := l.finish()
	addFaultRow(faultRow{fmt.Sprintf("API server down %.0fs, node1's proxy restarted meanwhile", apiUp.Sub(apiDown).Seconds()), loadDesc(long), summary,
		strings.Join(recovered, ", ") + fmt.Sprintf("; a scale change programmed %.1fs after the API returned", caughtUp.Seconds())})
	if failures > 0 {
		t.Errorf("%d requests or connections failed during the API outage: %s", failures, summary)
	}
}

// Drift: something else changes what the proxy owns. Ours repairs each
// change at its next full resync (--ipvs-sync-period=5s here), and leaves
// another tool's virtual server, chain and ipset alone.
func TestDriftIsRepaired(t *testing.T) {
	const (
		node       = "node1"
		syncPeriod = 5 * time.Second
		foreignVIP = "192.0.2.80:80"
	)
	ctx := context.Background()
	app := newEchoApp(t, "e2e-drift", 2)
	lcRestartProxies(t, []string{node}, []string{"--ipvs-sync-period=" + syncPeriod.String()}, nil)
	app.waitProgrammed(t)
	cip := app.clusterIP()
	vip := cip + ":80"
	rs := app.podIPs()[0] + ":8080"

	// Another tool's state, on node1.
	t.Cleanup(func() {
		_, _ = lab.Output(context.Background(), node, "ipvsadm", "-D", "-t", foreignVIP)
		_, _ = lab.Output(context.Background(), node, "iptables", "-t", "nat", "-F", "FOREIGN-CHAIN")
		_, _ = lab.Output(context.Background(), node, "iptables", "-t", "nat", "-X", "FOREIGN-CHAIN")
		_, _ = lab.Output(context.Background(), node, "ipset", "destroy", "foreign-set")
	})
	addForeign := func() {
		nodeOutput(t, node, "ipvsadm", "-A", "-t", foreignVIP, "-s", "wrr")
		nodeOutput(t, node, "iptables", "-t", "nat", "-N", "FOREIGN-CHAIN")
		nodeOutput(t, node, "iptables", "-t", "nat", "-A", "FOREIGN-CHAIN", "-s", "192.0.2.0/24", "-j", "RETURN")
		nodeOutput(t, node, "ipset", "create", "foreign-set", "hash:ip")
		nodeOutput(t, node, "ipset", "add", "foreign-set", "192.0.2.81")
	}
	foreign := func() string {
		return strings.Join([]string{
			strings.TrimSpace(nodeOutput(t, node, "ipvsadm", "-Ln", "-t", foreignVIP)),
			strings.TrimSpace(nodeOutput(t, node, "iptables", "-t", "nat", "-S", "FOREIGN-CHAIN")),
			strings.TrimSpace(nodeOutput(t, node, "ipset", "list", "foreign-set")),
		}, "\n")
	}
	var foreignBefore string

	has := func(argv []string, want string) func() bool {
		return func() bool {
			out, err := lab.Output(ctx, node, argv...)
			return err == nil && strings.Contains(out, want)
		}
	}
	vsBack := has([]string{"ipvsadm", "-Ln", "-t", vip}, rs)
	// realServers lists the virtual server's real servers with their
	// weights, "ADDR:PORT WEIGHT" each, sorted, from ipvsadm -Ln.
	realServers := func() []string {
		out, err := lab.Output(ctx, node, "ipvsadm", "-Ln", "-t", vip)
		if err != nil {
			return nil
		}
		var rss []string
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 4 && f[0] == "->" && f[1] != "RemoteAddress:Port" {
				rss = append(rss, f[1]+" "+f[3])
			}
		}
		slices.Sort(rss)
		return rss
	}
	rssBefore := realServers()
	rssBack := func() bool { return slices.Equal(realServers(), rssBefore) }
	const stranger = "10.244.99.99:8080"
	cases := []struct {
		name     string
		drift    [][]string
		repaired func() bool
		upstream bool       // upstream kube-proxy repairs it too
		undo     [][]string // when upstream does not
	}{
		// First: it also clears another tool's virtual servers, which
		// the case adds after it.
		{"every virtual server gone (ipvsadm -C)", [][]string{{"ipvsadm", "-C"}}, vsBack, true, nil},
		{"our chain flushed (iptables -t nat -F KUBE-SERVICES)", [][]string{{"iptables", "-t", "nat", "-F", "KUBE-SERVICES"}},
			has([]string{"iptables", "-t", "nat", "-S", "KUBE-SERVICES"}, "KUBE-CLUSTER-IP"), true, nil},
		{"an ipset flushed (ipset flush KUBE-CLUSTER-IP)", [][]string{{"ipset", "flush", "KUBE-CLUSTER-IP"}},
			has([]string{"ipset", "list", "KUBE-CLUSTER-IP"}, cip+",tcp:80"), true, nil},
		{"a real server deleted (ipvsadm -d)", [][]string{{"ipvsadm", "-d", "-t", vip, "-r", rs}}, vsBack, true, nil},
		// The same number of real servers, so that only reading them all
		// finds these.
		{"a real server replaced by another (ipvsadm -d, ipvsadm -a)", [][]string{
			{"ipvsadm", "-d", "-t", vip, "-r", rs}, {"ipvsadm", "-a", "-t", vip, "-r", stranger, "-m", "-w", "1"},
		}, rssBack, true, nil},
		// Upstream resets weights at its first sync only.
		{"a real server's weight set to 0 (ipvsadm -e)", [][]string{{"ipvsadm", "-e", "-t", vip, "-r", rs, "-m", "-w", "0"}},
			rssBack, false, [][]string{{"ipvsadm", "-e", "-t", vip, "-r", rs, "-m", "-w", "1"}}},
		{"the scheduler changed (ipvsadm -E -s wlc)", [][]string{{"ipvsadm", "-E", "-t", vip, "-s", "wlc"}},
			has([]string{"ipvsadm", "-Ln", "-t", vip}, " rr"), true, nil},
		{"a VIP removed from kube-ipvs0", [][]string{{"ip", "addr", "del", cip + "/32", "dev", "kube-ipvs0"}},
			has([]string{"ip", "-o", "addr", "show", "dev", "kube-ipvs0"}, " "+cip+"/32 "), true, nil},
		{"kube-ipvs0 deleted", [][]string{{"ip", "link", "del", "kube-ipvs0"}},
			has([]string{"ip", "-o", "addr", "show", "dev", "kube-ipvs0"}, " "+cip+"/32 "), true, nil},
		{"a sysctl flipped (net.ipv4.vs.conntrack=0)", [][]string{{"sysctl", "-w", "net.ipv4.vs.conntrack=0"}},
			has([]string{"sysctl", "-n", "net.ipv4.vs.conntrack"}, "1"), false,
			[][]string{{"sysctl", "-w", "net.ipv4.vs.conntrack=1"}}},
	}
	for _, c := range cases {
		for _, argv := range c.drift {
			nodeOutput(t, node, argv...)
		}
		start := time.Now()
		limit := syncPeriod + 5*time.Second
		if lab.Proxy == "upstream" && !c.upstream {
			time.Sleep(2 * limit)
			if c.repaired() {
				t.Errorf("step: %s: upstream repaired it; the case says it does not", c.name)
			}
			addFaultRow(faultRow{"drift: " + c.name, "-", "-", "not repaired (upstream sets sysctls and weights only at start)"})
			for _, argv := range c.undo {
				nodeOutput(t, node, argv...)
			}
			continue
		}
		for !c.repaired() {
			if time.Since(start) > 3*limit {
				t.Fatalf("step: %s: not repaired after %.0fs (sync period %s)", c.name, time.Since(start).Seconds(), syncPeriod)
			}
			time.Sleep(250 * time.Millisecond)
		}
		took := time.Since(start)
		t.Logf("%s: repaired after %.1fs", c.name, took.Seconds())
		if took > limit {
			t.Errorf("step: %s: repaired after %.1fs, want within %s (sync period + 5 s)", c.name, took.Seconds(), limit)
		}
		addFaultRow(faultRow{"drift: " + c.name, "-", "-", fmt.Sprintf("repaired after %.1fs (sync period %s)", took.Seconds(), syncPeriod)})
		app.waitProgrammed(t)
		requireAnsweredBy(t, "step: after "+c.name, request(t, node, "tcp", vip, 4), app.podNames())
		if foreignBefore == "" {
			addForeign()
			foreignBefore = foreign()
		}
	}
	if lab.Proxy != "upstream" {
		if got := foreign(); got != foreignBefore {
			t.Errorf("another tool's state changed:\nbefore:\n%s\nafter:\n%s", foreignBefore, got)
		}
	}
}
