//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// Isolation: one bad Service never hurts the node. A Service asks for
// what the node cannot give (a scheduler the kernel lacks, source ranges
// of the other family, an address another Service holds) and the rest of
// the node's Services, its health endpoints and the health check node
// ports keep working; the Service's owner gets a Warning Event.

const (
	isoSchedulerAnnotation = "ipvs.kube-ipvs-proxy.io/scheduler"
	isoWrongFamilyLBIP     = "192.0.2.50" // TestSourceRangesOfTheWrongFamily
	isoClaimedLBIP         = "192.0.2.60" // TestLoadBalancerIPClaimedTwice
)

// A Service annotated with the twos scheduler, which the lab's kernel
// (Debian 6.1) has no module for: it is programmed with the default
// scheduler (rr) and answers from every vantage point; a Warning Event
// SchedulerUnavailable says so, once per node even across a proxy
// restart; a fallback is no failure (kubeipvsproxy_services_failed 0).
// While it is there for 3 minutes, /livez and /healthz stay 200 on every
// node, a health check node port keeps answering 200 where its endpoint
// is and 503 elsewhere, and another Service is programmed as usual.
func TestUnavailableSchedulerStaysWithItsService(t *testing.T) {
	const (
		present = 3 * time.Minute
		reason  = "SchedulerUnavailable"
	)
	ctx := context.Background()
	nodes := lab.NodeNames()
	isoRequireDefaultProxies(t)

	// The health check node port: an externalTrafficPolicy Local
	// LoadBalancer Service whose only endpoint is on node1.
	hc := newExtApp(t, "e2e-twos-hc", 1, "node1", map[string]func(*v1.Service){
		"lb": func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		},
	})
	hcPort := hc.svcs["lb"].Spec.HealthCheckNodePort
	if hcPort == 0 {
		t.Fatalf("step: no healthCheckNodePort allocated")
	}
	probes := append(isoHealthProbes(), isoHealthCheckProbes(hcPort, "node1")...)
	isoWaitProbes(t, "health endpoints and the health check node port before the twos Service", probes)

	app := newExtApp(t, "e2e-twos", 2, "", map[string]func(*v1.Service){
		"echo": func(s *v1.Service) { s.Annotations = map[string]string{isoSchedulerAnnotation: "twos"} },
	})
	cip := app.svcs["echo"].Spec.ClusterIP
	np := app.nodePort("echo")
	for _, n := range nodes {
		isoWaitVS(t, n, "-t", cip+":80", "rr", app.podIPs())
		isoWaitVS(t, n, "-u", cip+":80", "rr", app.podIPs())
		isoWaitVS(t, n, "-t", fmt.Sprintf("%s:%d", extNodeAddr(n), np), "rr", app.podIPs())
	}
	pods := isoPodsByNode(t, app.ns, hc.ns)
	isoReachFromEverywhere(t, "twos Service", pods, cip, np, app.podNames())
	t.Logf("%s: %s", reason, serviceEvent(t, app.ns, "echo", reason))
	isoRequireNoFailedServices(t, "with the twos Service")

	watchStart := time.Now()
	w := isoStartWatch(probes, 3*time.Second)
	// Another Service meanwhile: programmed in the usual time.
	later := isoCreateLike(t, app.ns, "later", nil)
	for _, n := range nodes {
		isoWaitVS(t, n, "-t", later.Spec.ClusterIP+":80", "rr", app.podIPs())
	}
	extAnswered(t, "node1 -> the later Service", "node1", later.Spec.ClusterIP+":80", 4, app.podNames())
	laterTook := time.Since(watchStart)
	t.Logf("another Service programmed on every node and answering %.1fs after its creation", laterTook.Seconds())
	// The twos Service stays for the rest of the 3 minutes; every 30 s it
	// still answers and counts as no failure.
	for time.Since(watchStart) < present {
		time.Sleep(min(30*time.Second, time.Until(watchStart.Add(present))))
		extAnswered(t, "node1 -> twos Service", "node1", cip+":80", 2, app.podNames())
		isoRequireNoFailedServices(t, fmt.Sprintf("%.0fs into the watch", time.Since(watchStart).Seconds()))
	}
	rounds, fails := w.finish()
	t.Logf("%d rounds of %d probes in %.0fs, %d failed", rounds, len(probes), time.Since(watchStart).Seconds(), len(fails))
	for _, f := range fails {
		t.Errorf("step: while the twos Service was there: %s", f)
	}

	evs := isoEvents(t, app.ns, "echo", reason)
	t.Logf("Events %s before the restart:\n%s", reason, isoDescribeEvents(evs))
	if len(evs) > len(nodes) {
		t.Errorf("step: %d Events %s, want at most one per node (%d)", len(evs), reason, len(nodes))
	}
	// `lab proxy node1 restart`: the new process must not add an Event.
	if err := lab.ProxyCommand(ctx, "node1", "restart", io.Discard); err != nil {
		t.Fatalf("step: restarting node1's proxy: %v", err)
	}
	if err := lab.WaitProxyHealthy(ctx, "node1", 3*time.Minute); err != nil {
		t.Fatalf("step: %v", err)
	}
	lcSentinel(t, app.ns, "the restarted proxy synced")
	isoWaitVS(t, "node1", "-t", cip+":80", "rr", app.podIPs())
	after := isoEventsStayAtMost(t, app.ns, "echo", reason, len(nodes), 15*time.Second)
	t.Logf("Events %s after node1's restart: %d:\n%s", reason, after, isoDescribeEvents(isoEvents(t, app.ns, "echo", reason)))

	// Without the annotation: still rr, and no new Event.
	isoUpdateService(t, app.ns, "echo", "removing the scheduler annotation", func(s *v1.Service) {
		delete(s.Annotations, isoSchedulerAnnotation)
	})
	lcSentinel(t, app.ns, "the proxies saw the annotation go")
	for _, n := range nodes {
		isoWaitVS(t, n, "-t", cip+":80", "rr", app.podIPs())
	}
	isoReachFromEverywhere(t, "Service without the annotation", pods, cip, np, app.podNames())
	if n := isoEventsStayAtMost(t, app.ns, "echo", reason, after, 10*time.Second); n != after {
		t.Errorf("step: Events %s went from %d to %d after the annotation was removed", reason, after, n)
	}
	addFaultRow(faultRow{"a Service asks for a scheduler the kernel lacks (twos), 3 min", fmt.Sprintf("%d probes every 3 s", len(probes)),
		fmt.Sprintf("%d/%d health and health check probes", len(fails), rounds*len(probes)),
		fmt.Sprintf("programmed with rr; another Service answered %.1fs after creation; %d Events across a restart", laterTook.Seconds(), after)})
}

// isoRequireNoFailedServices checks kubeipvsproxy_services_failed is 0 on
// every node (ours only: upstream has no such metric).
func isoRequireNoFailedServices(t *testing.T, step string) {
	t.Helper()
	if lab.Proxy == "upstream" {
		return
	}
	for _, n := range lab.NodeNames() {
		v, found := isoMetric(t, n, "kubeipvsproxy_services_failed")
		if !found || v != 0 {
			t.Errorf("step: %s: %s kubeipvsproxy_services_failed = %v (exported %v), want 0", step, n, v, found)
		}
	}
}

// isoCreateLike creates a Service like labctl.EchoService selecting the
// echo pods of ns, changed by change (may be nil).
func isoCreateLike(t *testing.T, ns, name string, change func(*v1.Service)) *v1.Service {
	t.Helper()
	s := labctl.EchoService(ns, "echo")
	s.Name = name
	if change != nil {
		change(s)
	}
	created, err := cs.CoreV1().Services(ns).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating Service %s/%s: %v", ns, name, err)
	}
	return created
}

// The API server is down for more than 2 minutes: /healthz and /livez
// stay 200 on every node throughout (--healthz-api-server-timeout is off
// by default), the Services keep answering from the kernel state, and
// once the API server is back a change is programmed as soon as the
// informers watch again: after an outage this long, client-go's reflectors
// retry with a backoff of up to 30 s with as much jitter again (the
// figure the README gives), so the limit is that plus a sync.
func TestAPIServerOutageKeepsHealth(t *testing.T) {
	const (
		outage      = 130 * time.Second
		changeLimit = 75 * time.Second
	)
	ctx := context.Background()
	isoRequireDefaultProxies(t)
	app := lcNewApp(t, "e2e-api-outage-health", 2, 0, nil)
	pod := "pod/" + app.ns + "/" + app.podNames()[0]
	vip := app.clusterIP() + ":80"

	probes := isoHealthProbes()
	w := isoStartWatch(probes, 3*time.Second)
	l := startLoad(t, "node1", pod, vip, 1, outage+15*time.Second)
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
	// The outage itself: a fixed length, the fault under test.
	time.Sleep(time.Until(apiDown.Add(outage)))
	if err := lab.StartAPIServer(ctx); err != nil {
		t.Fatalf("step: starting the API server again: %v", err)
	}
	restarted = true
	apiUp := time.Now()
	t.Logf("the API server was down for %.0fs", apiUp.Sub(apiDown).Seconds())

	// A change after the return: a new Service, on every node.
	svc := isoCreateLike(t, app.ns, "after", nil)
	// Its virtual server first (no endpoint controller in the way), then
	// its real servers.
	var worst time.Duration
	for _, n := range lab.NodeNames() {
		lcEventually(t, n+": the virtual server of the Service created after the outage", propagateTimeout, func() (bool, string) {
			_, found, err := lab.IPVSVirtualServer(ctx, n, "TCP", svc.Spec.ClusterIP+":80")
			return err == nil && found, fmt.Sprintf("absent (err %v)", err)
		})
		worst = time.Since(apiUp)
	}
	for _, n := range lab.NodeNames() {
		if err := lab.WaitIPVSRealServers(ctx, n, "TCP", svc.Spec.ClusterIP+":80", app.podIPs(), propagateTimeout); err != nil {
			t.Fatalf("step: the Service created after the outage on %s: %v", n, err)
		}
	}
	t.Logf("a Service created after the API server returned: its virtual server on every node %.1fs after the return, its real servers %.1fs after",
		worst.Seconds(), time.Since(apiUp).Seconds())
	if worst > changeLimit {
		t.Errorf("step: a change after the outage took %.1fs to reach every node, want within %s", worst.Seconds(), changeLimit)
	}
	lcScale(t, app, 3)
	app.waitPods(t, 3)
	app.waitProgrammed(t)
	summary, failures := l.finish()
	rounds, fails := w.finish()
	for _, f := range fails {
		t.Errorf("step: health during and after the API outage: %s", f)
	}
	t.Logf("%d rounds of %d health probes, %d failed; load: %s", rounds, len(probes), len(fails), summary)
	if failures > 0 {
		t.Errorf("%d requests or connections failed during the API outage: %s", failures, summary)
	}
	addFaultRow(faultRow{fmt.Sprintf("API server down %.0fs, default flags", apiUp.Sub(apiDown).Seconds()), loadDesc(1), summary,
		fmt.Sprintf("/livez and /healthz: %d/%d probes failed; a new Service on every node %.1fs after the API returned",
			len(fails), rounds*len(probes), worst.Seconds())})
}

// Two LoadBalancer Services in different namespaces claim the same
// load-balancer IP and port. The older one keeps it: every vantage point
// reaches its pods only, and the younger gets a Warning Event
// AddressConflict. Once the older is deleted, the younger takes the
// address within seconds, well under the sync period.
func TestLoadBalancerIPClaimedTwice(t *testing.T) {
	const handoverLimit = 10 * time.Second
	ctx := context.Background()
	isoRequireDefaultProxies(t)
	lb := func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeLoadBalancer }
	older := newExtApp(t, "e2e-claim-older", 2, "", map[string]func(*v1.Service){"echo": lb})
	older.setIngress(t, "echo", v1.LoadBalancerIngress{IP: isoClaimedLBIP})
	vip := isoClaimedLBIP + ":80"
	for _, n := range lab.NodeNames() {
		isoWaitVS(t, n, "-t", vip, "rr", older.podIPs())
	}
	// creationTimestamp has a resolution of a second: the younger must be
	// younger by it.
	for time.Since(older.svcs["echo"].CreationTimestamp.Time) < 1500*time.Millisecond {
		time.Sleep(100 * time.Millisecond)
	}
	younger := newExtApp(t, "e2e-claim-younger", 2, "", map[string]func(*v1.Service){"echo": lb})
	younger.setIngress(t, "echo", v1.LoadBalancerIngress{IP: isoClaimedLBIP})
	t.Logf("older created %s, younger %s", older.svcs["echo"].CreationTimestamp, younger.svcs["echo"].CreationTimestamp)
	t.Logf("AddressConflict: %s", serviceEvent(t, younger.ns, "echo", "AddressConflict"))
	lcSentinel(t, younger.ns, "the proxies saw both claims")
	for _, n := range lab.NodeNames() {
		isoWaitVS(t, n, "-t", vip, "rr", older.podIPs())
	}
	if evs := isoEvents(t, older.ns, "echo", "AddressConflict"); len(evs) > 0 {
		t.Errorf("step: the older Service got AddressConflict Events:\n%s", isoDescribeEvents(evs))
	}

	pods := isoPodsByNode(t, older.ns, younger.ns)
	for _, n := range lab.NodeNames() {
		if p := pods[n]; p != "" {
			extAnswered(t, p+" (on "+n+") -> the claimed address", p, vip, 6, older.podNames())
		}
		extAnswered(t, n+" -> the claimed address", n, vip, 6, older.podNames())
		extRoute(t, isoClaimedLBIP, n)
		extAnswered(t, "external client -> the claimed address through "+n, "vm", vip, 6, older.podNames())
	}

	// The older goes: the younger's pods answer, through node1 and in
	// every node's kernel.
	extRoute(t, isoClaimedLBIP, "node1")
	if err := cs.CoreV1().Services(older.ns).Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("step: deleting the older Service: %v", err)
	}
	deleted := time.Now()
	youngPods := map[string]bool{}
	for _, p := range younger.podNames() {
		youngPods[p] = true
	}
	var first time.Duration
	lcEventually(t, "the younger Service's pods answer on the address", propagateTimeout, func() (bool, string) {
		answers, failed := extTry(t, "vm", vip, 1, "1s")
		if len(answers) == 1 && youngPods[answers[0].pod] {
			first = time.Since(deleted)
			return true, ""
		}
		return false, fmt.Sprintf("answers %v, failures %q", answers, failed)
	})
	var perNode []string
	for _, n := range lab.NodeNames() {
		isoWaitVS(t, n, "-t", vip, "rr", younger.podIPs())
		took := time.Since(deleted)
		perNode = append(perNode, fmt.Sprintf("%s %.1fs", n, took.Seconds()))
		if took > handoverLimit {
			t.Errorf("step: %s programmed the younger Service on the address %.1fs after the older's deletion, want within %s (sync period %s)",
				n, took.Seconds(), handoverLimit, isoSyncPeriod())
		}
	}
	t.Logf("after the older Service's deletion: the younger's pods answered through node1 after %.1fs; programmed on %s (sync period %s)",
		first.Seconds(), strings.Join(perNode, ", "), isoSyncPeriod())
	if first > handoverLimit {
		t.Errorf("step: the younger Service answered %.1fs after the older's deletion, want within %s", first.Seconds(), handoverLimit)
	}
	for _, n := range lab.NodeNames() {
		extAnswered(t, n+" -> the address, now the younger's", n, vip, 6, younger.podNames())
	}
	extAnswered(t, "external client -> the address, now the younger's", "vm", vip, 6, younger.podNames())
	addFaultRow(faultRow{"two LoadBalancer Services claim one IP:port", "-", "the older keeps it; AddressConflict on the younger",
		fmt.Sprintf("younger answers %.1fs after the older's deletion; programmed on %s (sync period %s)", first.Seconds(), strings.Join(perNode, ", "), isoSyncPeriod())})
}

// A LoadBalancer Service with an IPv4 load-balancer IP whose
// loadBalancerSourceRanges are all IPv6: no IPv4 client is in the
// ranges, so none gets through (it never fails open), and a Warning
// Event SourceRangesUnusable tells the owner.
func TestSourceRangesOfTheWrongFamily(t *testing.T) {
	const observe = 40 * time.Second // longer than a resync at the lab's sync period
	isoRequireDefaultProxies(t)
	app := newExtApp(t, "e2e-ranges-family", 2, "", map[string]func(*v1.Service){
		"echo": func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{"fd00:172:30::1/128", "fd00:10:244::/56"}
		},
	})
	if fams := app.svcs["echo"].Spec.IPFamilies; len(fams) != 1 || fams[0] != v1.IPv4Protocol {
		t.Fatalf("step: the Service's families are %v, want IPv4 only", fams)
	}
	app.setIngress(t, "echo", v1.LoadBalancerIngress{IP: isoWrongFamilyLBIP})
	vip := isoWrongFamilyLBIP + ":80"
	lcSentinel(t, app.ns, "the proxies saw the Service")
	cip := app.svcs["echo"].Spec.ClusterIP
	for _, n := range lab.NodeNames() {
		n := n
		lcEventually(t, n+": the load-balancer IP is closed in the kernel", propagateTimeout, func() (bool, string) {
			desc, closed := isoClosedState(t, n, isoWrongFamilyLBIP)
			return closed, desc
		})
		desc, _ := isoClosedState(t, n, isoWrongFamilyLBIP)
		t.Logf("%s: kernel state of the load-balancer IP: %s", n, desc)
	}
	pods := isoPodsByNode(t, app.ns)
	start := time.Now()
	checks := 0
	for {
		for _, n := range lab.NodeNames() {
			extRoute(t, isoWrongFamilyLBIP, n)
			extFails(t, "external IPv4 client through "+n+", outside the IPv6-only ranges", "vm", vip, extNoAnswer)
			extFails(t, n+" -> the load-balancer IP", n, vip, extNoAnswer)
			if p := pods[n]; p != "" {
				extFails(t, p+" -> the load-balancer IP", p, vip, extNoAnswer)
			}
		}
		checks++
		if time.Since(start) > observe {
			break
		}
		time.Sleep(5 * time.Second)
	}
	for _, n := range lab.NodeNames() {
		desc, closed := isoClosedState(t, n, isoWrongFamilyLBIP)
		t.Logf("%s after %.0fs: %s", n, time.Since(start).Seconds(), desc)
		if !closed {
			t.Errorf("step: %s: the load-balancer IP is open in the kernel after %.0fs: %s", n, time.Since(start).Seconds(), desc)
		}
	}
	// The rest of the Service is not the problem: its cluster IP answers.
	if answers, failed := extTry(t, "node1", cip+":80", 2, "2s"); len(failed) > 0 {
		t.Logf("note: the cluster IP %s of the Service does not answer either: %q", cip, failed)
	} else {
		t.Logf("the Service's cluster IP answers: %v", answers)
	}
	t.Logf("SourceRangesUnusable: %s", serviceEvent(t, app.ns, "echo", "SourceRangesUnusable"))
	addFaultRow(faultRow{"LoadBalancer IPv4 with IPv6-only source ranges", "-", fmt.Sprintf("0 IPv4 connections through in %d rounds over %.0fs", checks, time.Since(start).Seconds()),
		"SourceRangesUnusable Event; never opens"})
}

// isoClosedState describes how a node keeps a load-balancer IP closed:
// its virtual server (or none) and its entries in our ipsets. closed says
// whether no source can get through: no virtual server, or the address
// behind the firewall (KUBE-LOAD-BALANCER-FW) with no source range
// (KUBE-LOAD-BALANCER-SOURCE-CIDR) let in.
func isoClosedState(t *testing.T, node, ip string) (desc string, closed bool) {
	t.Helper()
	var parts []string
	vs := false
	for _, l := range strings.Split(nodeOutput(t, node, "ipvsadm", "-Sn"), "\n") {
		if strings.Contains(l, " "+ip+":") {
			parts = append(parts, strings.TrimSpace(l))
			vs = true
		}
	}
	if !vs {
		parts = append(parts, "no virtual server")
	}
	fw, ranges := false, false
	for _, l := range strings.Split(nodeOutput(t, node, "ipset", "save"), "\n") {
		if strings.HasPrefix(l, "add KUBE-") && strings.Contains(l, " "+ip+",") {
			parts = append(parts, l)
			fw = fw || strings.HasPrefix(l, "add KUBE-LOAD-BALANCER-FW ")
			ranges = ranges || strings.HasPrefix(l, "add KUBE-LOAD-BALANCER-SOURCE-CIDR ")
		}
	}
	return strings.Join(parts, "; "), !vs || (fw && !ranges)
}
