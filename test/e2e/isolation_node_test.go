//go:build e2e

package e2e

import (
	"context"
	"fmt"
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
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// Isolation from the node's own troubles: another program holding the
// xtables lock, and a cold start of 10000 Services on a throttled CPU
// while the kubelet's liveness probe runs.

const (
	// isoLegacyBin holds iptables, iptables-restore and iptables-save
	// links to the legacy backend: a proxy with it first in PATH uses
	// iptables-legacy, which takes the xtables lock (iptables-nft, the
	// VM's default, ignores it).
	isoLegacyBin = "/run/lab/iptables-legacy-bin"
	xtablesLock  = "/run/xtables.lock"
	isoLockLBIP  = "192.0.2.70" // TestXtablesLockHeldLongerThanASyncPeriod
)

// isoUseLegacyIptables runs node's proxy on the legacy iptables backend
// until the test ends: the proxy stops, --cleanup removes its nft state,
// and it starts again with isoLegacyBin first in PATH. At the end the
// legacy state is cleaned up the same way and the lab's proxy restored.
// restart restarts the legacy proxy (SIGTERM; the kernel state stays).
func isoUseLegacyIptables(t *testing.T, node string) (restart func()) {
	t.Helper()
	ctx := context.Background()
	nodeOutput(t, "vm", "sh", "-c", "set -e; mkdir -p "+isoLegacyBin+
		`; for b in iptables ip6tables; do for s in "" -restore -save; do ln -sf /usr/sbin/$b-legacy$s `+isoLegacyBin+`/$b$s; done; done`)
	argv := lab.ProxyArgv(node)
	withLegacy := func(argv ...string) []string {
		return append([]string{"sh", "-c", "PATH=" + isoLegacyBin + ":$PATH exec \"$@\"", "sh"}, argv...)
	}
	if out, err := lab.Output(ctx, node, withLegacy("iptables", "--version")...); err != nil || !strings.Contains(out, "legacy") {
		t.Fatalf("step: iptables through %s on %s: %q, %v", isoLegacyBin, node, out, err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if err := lab.StopProxy(ctx, node); err != nil {
			t.Errorf("cleanup: stopping the legacy proxy on %s: %v", node, err)
		}
		if out, err := lab.Output(ctx, node, withLegacy(argv[0], "--cleanup")...); err != nil {
			t.Errorf("cleanup: --cleanup of the legacy state on %s: %v\n%s", node, err, out)
		}
		if err := lab.RestartProxyWithArgs(ctx, node, nil); err != nil {
			t.Errorf("cleanup: restoring the proxy on %s: %v", node, err)
		} else if err := lab.WaitProxyHealthy(ctx, node, 3*time.Minute); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := lab.StopProxy(ctx, node); err != nil {
		t.Fatalf("step: stopping the proxy on %s: %v", node, err)
	}
	if out, err := lab.Output(ctx, node, argv[0], "--cleanup"); err != nil {
		t.Fatalf("step: --cleanup of the nft state on %s: %v\n%s", node, err, out)
	}
	start := func() {
		t.Helper()
		if err := lab.StartProxyArgv(ctx, node, withLegacy(argv...)); err != nil {
			t.Fatalf("step: starting the proxy on %s with legacy iptables: %v", node, err)
		}
		if err := lab.WaitProxyHealthy(ctx, node, 3*time.Minute); err != nil {
			t.Fatalf("step: the legacy proxy on %s: %v", node, err)
		}
	}
	start()
	lcEventually(t, node+": our chains in the legacy tables", propagateTimeout, func() (bool, string) {
		out, err := lab.Output(ctx, node, "iptables-legacy-save", "-t", "nat")
		return err == nil && strings.Contains(out, "-A KUBE-SERVICES "), out
	})
	return func() {
		t.Helper()
		if err := lab.StopProxy(ctx, node); err != nil {
			t.Fatalf("step: stopping the legacy proxy on %s: %v", node, err)
		}
		start()
	}
}

// isoFirewallState is what node's proxy owns in ipsets and in the legacy
// iptables tables, as text.
func isoFirewallState(t *testing.T, node string) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(nodeOutput(t, node, "ipset", "save"), "\n") {
		if strings.HasPrefix(l, "create KUBE-") || strings.HasPrefix(l, "add KUBE-") {
			lines = append(lines, l)
		}
	}
	for _, table := range []string{"nat", "filter", "mangle"} {
		for _, l := range strings.Split(nodeOutput(t, node, "iptables-legacy-save", "-t", table), "\n") {
			if strings.HasPrefix(l, ":KUBE-") {
				l, _, _ = strings.Cut(l, " [") // counters
			}
			if strings.HasPrefix(l, "-A KUBE-") || strings.HasPrefix(l, ":KUBE-") || strings.Contains(l, "-j KUBE-") {
				lines = append(lines, table+" "+l)
			}
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// Another program holds the xtables lock (flock on /run/xtables.lock, as
// iptables-legacy does) for longer than a sync period, on a node whose
// proxy uses iptables-legacy, while a Deployment scales up and down: the
// IPVS real servers follow the scale in the usual time with the lock held,
// /livez stays 200 (the hold is shorter than twice the sync period), and
// once the lock is released the iptables and ipset state converges to
// what it was before.
func TestXtablesLockHeldLongerThanASyncPeriod(t *testing.T) {
	const (
		node     = "node1"
		lockName = "e2e-xtables-lock"
		// A change that arrives while a sync waits on the lock (-w 5) waits
		// for it, then for its own sync: 5 s, the minimum interval (1 s) and
		// the usual propagation (about a second, more in a loaded VM).
		followLag = 12 * time.Second
	)
	if lab.Proxy == "upstream" {
		t.Skip("the legacy backend is chosen through PATH, which kube-proxy does not follow (it probes both backends)")
	}
	ctx := context.Background()
	syncPeriod := isoSyncPeriod()
	minHold := syncPeriod + 5*time.Second
	isoRequireDefaultProxies(t)
	app := lcNewApp(t, "e2e-xtables-lock", 1, 0, nil)
	restartLegacy := isoUseLegacyIptables(t, node)
	app.waitProgrammed(t)
	vip := app.clusterIP() + ":80"
	settledState(t, app, node) // earlier cases' namespaces gone, the state still
	before := isoFirewallState(t, node)
	logFrom := isoLogSize(node)

	// The lock, held by another program in the VM (the lock file is the
	// VM's: every node's iptables-legacy takes it).
	t.Cleanup(func() {
		_, _ = lab.Agent().StopDaemon(context.Background(), agent.SignalRequest{Name: lockName})
	})
	if _, err := lab.Agent().StartDaemon(ctx, agent.DaemonSpec{Name: lockName, Argv: []string{"flock", "-x", xtablesLock, "sleep", "3600"}}); err != nil {
		t.Fatalf("step: holding %s: %v", xtablesLock, err)
	}
	lcEventually(t, "the xtables lock is held", 30*time.Second, func() (bool, string) {
		_, err := lab.Output(ctx, "vm", "flock", "-n", xtablesLock, "true")
		return err != nil, "flock -n succeeded: not held yet"
	})
	locked := time.Now()
	w := isoStartWatch(isoHealthProbes(node)[:1], 2*time.Second) // node1's /livez

	// A Service that needs an iptables rule of its own (a load-balancer
	// IP with source ranges: KUBE-IPVS-OUT-FILTER keeps the node out), so
	// that the proxy has iptables work blocked on the lock.
	fw := isoCreateLike(t, app.ns, "fw", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{extClient + "/32"}
	})
	isoSetIngress(t, app.ns, "fw", isoLockLBIP)
	t.Logf("Service fw: cluster IP %s, load-balancer IP %s", fw.Spec.ClusterIP, isoLockLBIP)

	follow := func(n int) time.Duration {
		t.Helper()
		lcScale(t, app, n)
		app.waitPods(t, n)
		ready := time.Now()
		if err := lab.WaitIPVSRealServers(ctx, node, "TCP", vip, app.podIPs(), propagateTimeout); err != nil {
			t.Fatalf("step: scaled to %d with the xtables lock held %.0fs: %v", n, time.Since(locked).Seconds(), err)
		}
		lag := time.Since(ready)
		t.Logf("scaled to %d: %s's real servers followed %.1fs after the endpoints were ready (lock held for %.0fs)", n, node, lag.Seconds(), time.Since(locked).Seconds())
		if lag > followLag {
			t.Errorf("step: scaled to %d: the real servers followed only %.1fs after the endpoints, want within %s", n, lag.Seconds(), followLag)
		}
		return lag
	}
	up := follow(3)
	down := follow(1)
	// Hold past a sync period, so that a periodic resync falls inside.
	time.Sleep(time.Until(locked.Add(minHold)))
	blocked, _ := lab.Output(ctx, "vm", "sh", "-c", "ps -eo pid,etimes,args | grep -E '[i]ptables' || true")
	t.Logf("iptables processes with the lock held %.0fs:\n%s", time.Since(locked).Seconds(), blocked)
	_, lbVS, _ := lab.IPVSVirtualServer(ctx, node, "TCP", isoLockLBIP+":80")
	t.Logf("the load-balancer IP %s has a virtual server on %s with the lock held: %v", isoLockLBIP, node, lbVS)
	requireAnsweredBy(t, "step: node1 -> the Service with the lock held", request(t, node, "tcp", vip, 4), app.podNames())
	if _, err := lab.Agent().StopDaemon(ctx, agent.SignalRequest{Name: lockName}); err != nil {
		t.Fatalf("step: releasing the xtables lock: %v", err)
	}
	held := time.Since(locked)
	released := time.Now()
	rounds, fails := w.finish()
	t.Logf("the lock was held %.1fs (sync period %s); %d /livez probes, %d failed", held.Seconds(), syncPeriod, rounds, len(fails))
	if held < 2*syncPeriod {
		for _, f := range fails {
			t.Errorf("step: /livez with the lock held %.0fs (< twice the sync period): %s", held.Seconds(), f)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s's proxy log from the hold on:\n%s", node, isoLogSince(t, node, logFrom, 120))
			t.Logf("%s: iptables-legacy-save:\n%s", node, nodeOutput(t, node, "iptables-legacy-save"))
		}
	})

	// Converged: the blocked work is done (the load-balancer IP's rule),
	// the state holds still, and a freshly started proxy, whose first sync
	// writes everything it wants, changes nothing.
	lcEventually(t, node+": the load-balancer IP's KUBE-IPVS-OUT-FILTER rule after the release", syncPeriod+propagateTimeout, func() (bool, string) {
		out := nodeOutput(t, node, "iptables-legacy-save", "-t", "filter")
		return strings.Contains(out, "-A KUBE-IPVS-OUT-FILTER -s "+isoLockLBIP+"/32"), out
	})
	ruleBack := time.Since(released)
	after := isoFirewallState(t, node)
	lcEventually(t, node+": the state holds still after the release", propagateTimeout, func() (bool, string) {
		time.Sleep(2 * time.Second)
		cur := isoFirewallState(t, node)
		same := cur == after
		after = cur
		return same, "still changing"
	})
	converged := time.Since(released)
	restartLegacy()
	lcSentinel(t, app.ns, "the restarted proxy synced")
	lcEventually(t, node+": a fresh proxy finds the state as the released one left it", propagateTimeout, func() (bool, string) {
		fresh := isoFirewallState(t, node)
		return fresh == after, "after the release:\n" + after + "\nafter a fresh proxy's sync:\n" + fresh
	})
	t.Logf("before the lock, without the load-balancer Service and at one replica:\n%s", before)
	t.Logf("after the release: the load-balancer rule after %.1fs, the state still after %.1fs", ruleBack.Seconds(), converged.Seconds())
	extWaitVS(t, node, "TCP", isoLockLBIP+":80", app.podIPs())
	addFaultRow(faultRow{fmt.Sprintf("xtables lock held %.0fs (sync period %s), iptables-legacy, scale 1 -> 3 -> 1", held.Seconds(), syncPeriod), "-",
		fmt.Sprintf("/livez %d/%d probes failed", len(fails), rounds),
		fmt.Sprintf("real servers followed in %.1f / %.1fs with the lock held; iptables and ipsets converged %.1fs after the release", up.Seconds(), down.Seconds(), converged.Seconds())})
}

// isoLogSize is the size of a node's proxy log now (the log is appended
// to across restarts).
func isoLogSize(node string) int {
	out, err := lab.Output(context.Background(), "vm", "stat", "-c", "%s", labctl.ProxyLogPath(node))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return n
}

// isoLogSince is the last max lines of a node's proxy log after its first
// from bytes.
func isoLogSince(t *testing.T, node string, from, max int) string {
	t.Helper()
	log := nodeOutput(t, "vm", "cat", labctl.ProxyLogPath(node))
	if from > len(log) {
		from = 0
	}
	lines := strings.Split(log[from:], "\n")
	if len(lines) > max {
		lines = lines[len(lines)-max:]
	}
	return strings.Join(lines, "\n")
}

// isoBulkClient is a client for writing thousands of objects: far above
// client-go's default rate limit.
func isoBulkClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", lab.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 2000, 4000
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// isoCreateServices creates n selectorless ClusterIP Services in ns, each
// with one EndpointSlice of eps ready endpoints (10.252.0.0/16, nobody
// answers there: the kernel is all that counts), 32 at a time.
func isoCreateServices(t *testing.T, c kubernetes.Interface, ns string, n, eps int) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	work := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := fmt.Sprintf("s%05d", i)
				_, err := c.CoreV1().Services(ns).Create(ctx, &v1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
				}, metav1.CreateOptions{})
				if err == nil {
					es := &discoveryv1.EndpointSlice{
						ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
						AddressType: discoveryv1.AddressTypeIPv4,
						Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
					}
					for j := range eps {
						k := i*eps + j
						es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.252.%d.%d", k/250, k%250+1)},
							Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
					}
					_, err = c.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{})
				}
				if err != nil {
					select {
					case errs <- fmt.Errorf("%s: %w", name, err):
					default:
					}
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("step: creating %d Services: %v", n, err)
	}
}

// isoDeleteServices deletes every Service and EndpointSlice of ns, 32 at a
// time, then the namespace.
func isoDeleteServices(c kubernetes.Interface, ns string) error {
	ctx := context.Background()
	if err := c.DiscoveryV1().EndpointSlices(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return fmt.Errorf("deleting the EndpointSlices: %w", err)
	}
	list, err := c.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	work := make(chan string)
	var mu sync.Mutex
	var first error
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				if err := c.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, s := range list.Items {
		work <- s.Name
	}
	close(work)
	wg.Wait()
	if first != nil {
		return first
	}
	return c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
}

// isoCountColdRS counts a node's real servers on the cold-start case's
// endpoint addresses (10.252.0.0/16, one per Service), -1 on error.
func isoCountColdRS(node string) int {
	out, err := lab.Output(context.Background(), node, "sh", "-c", `ipvsadm -Sn | grep -c '^-a -t 10\.96\..* -r 10\.252\.' || true`)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return -1
	}
	return n
}

// isoWaitCount polls isoCountColdRS every 5 s (listing 10000 virtual
// servers is work for the VM) until ok holds.
func isoWaitCount(t *testing.T, step, node string, timeout time.Duration, ok func(int) bool) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		n := isoCountColdRS(node)
		if n >= 0 && ok(n) {
			return n, time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("step: %s: %s has %d of the real servers after %.0fs", step, node, n, time.Since(start).Seconds())
		}
		time.Sleep(5 * time.Second)
	}
}
