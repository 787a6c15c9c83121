//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// These cases prove the ways into a Service from outside the cluster and the
// traffic policies: external IPs, load-balancer ingress IPs with source
// ranges, externalTrafficPolicy and internalTrafficPolicy Local, and the
// KUBE-IPVS-FILTER that keeps VIPs from exposing the node's own ports.
//
// The VM's root namespace (172.30.0.1 on the node bridge) is the external
// client. External and load-balancer IPs are TEST-NET-1 addresses (RFC 5737)
// that never leave the VM: a test routes one to a node with a /32 route in
// the VM's root namespace, the way a router or a cloud load balancer would,
// and removes the route when it ends.

const (
	extClient = labctl.BridgeAddr // the external client: the VM's root namespace

	extExternalIP  = "192.0.2.10" // TestExternalIPs
	extLBIP        = "192.0.2.20" // TestLoadBalancerSourceRanges
	extLBProxyIP   = "192.0.2.21" // the same Service's ipMode: Proxy ingress
	extLocalLBIP   = "192.0.2.30" // TestExternalTrafficPolicyLocal
	extGuardIP     = "192.0.2.40" // TestAddressGuard
	extFilterPort  = 9999         // TestIPVSFilter: a port no Service uses
	extFailTimeout = "2s"         // per request, when a request must fail
)

// extApp is an echo Deployment, optionally pinned to a node, behind one or
// more Services.
type extApp struct {
	ns   string
	svcs map[string]*v1.Service
	pods map[string]string // pod IP -> pod name
}

// newExtApp deploys `replicas` echo pods in a fresh namespace (on node when
// it is not empty, through the kubernetes.io/hostname nodeSelector the lab
// scheduler honours) and creates the given Services in front of them, each
// made from labctl.EchoService (a NodePort Service, ports 80 TCP and UDP)
// and then changed by its function. It waits for the ready endpoints of
// every Service, not for the proxies: each case waits for the kernel state
// it expects. The namespace is deleted when the test ends; on failure the
// lab report is printed.
func newExtApp(t *testing.T, ns string, replicas int, node string, svcs map[string]func(*v1.Service)) *extApp {
	t.Helper()
	ctx := context.Background()
	reportOnFailure(t)
	if err := labctl.EnsureNamespace(ctx, cs, ns); err != nil {
		t.Fatalf("step: creating namespace %s: %v", ns, err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	d := labctl.EchoDeployment(ns, "echo", int32(replicas))
	if node != "" {
		d.Spec.Template.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("step: creating the echo Deployment: %v", err)
	}
	a := &extApp{ns: ns, svcs: map[string]*v1.Service{}}
	names := make([]string, 0, len(svcs))
	for name := range svcs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		s := labctl.EchoService(ns, "echo")
		s.Name = name
		if f := svcs[name]; f != nil {
			f(s)
		}
		created, err := cs.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("step: creating Service %s/%s: %v", ns, name, err)
		}
		a.svcs[name] = created
	}
	var ips []string
	for _, name := range names {
		var err error
		if ips, err = lab.WaitReadyEndpoints(ctx, ns, name, replicas, podsReadyTimeout); err != nil {
			t.Fatalf("step: waiting for %d ready endpoints of %s/%s: %v", replicas, ns, name, err)
		}
	}
	podNames, err := lab.PodIPNames(ctx, ns, "app=echo")
	if err != nil {
		t.Fatal(err)
	}
	a.pods = map[string]string{}
	for _, ip := range ips {
		a.pods[ip] = podNames[ip]
	}
	if node != "" {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && p.Spec.NodeName != node {
				t.Fatalf("step: pod %s runs on %s, want %s (nodeSelector)", p.Name, p.Spec.NodeName, node)
			}
		}
	}
	return a
}

func (a *extApp) podIPs() []string {
	ips := make([]string, 0, len(a.pods))
	for ip := range a.pods {
		ips = append(ips, ip)
	}
	sort.Strings(ips)
	return ips
}

func (a *extApp) podNames() []string {
	names := make([]string, 0, len(a.pods))
	for _, n := range a.pods {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// pod is the target of one of the app's pods.
func (a *extApp) pod() string { return "pod/" + a.ns + "/" + a.podNames()[0] }

// nodePort returns a Service's TCP NodePort.
func (a *extApp) nodePort(svc string) int32 {
	for _, p := range a.svcs[svc].Spec.Ports {
		if p.Protocol == v1.ProtocolTCP {
			return p.NodePort
		}
	}
	return 0
}

// setIngress writes a Service's status.loadBalancer.ingress, as a cloud
// provider's load-balancer controller would (the lab runs none).
func (a *extApp) setIngress(t *testing.T, svc string, ingress ...v1.LoadBalancerIngress) {
	t.Helper()
	ctx := context.Background()
	s, err := cs.CoreV1().Services(a.ns).Get(ctx, svc, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("step: reading Service %s: %v", svc, err)
	}
	s.Status.LoadBalancer.Ingress = ingress
	if s, err = cs.CoreV1().Services(a.ns).UpdateStatus(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("step: writing the load-balancer status of %s: %v", svc, err)
	}
	a.svcs[svc] = s
}

// extRoute routes ip (a /32) from the VM's root namespace through a node,
// replacing any earlier route; the route is removed when the test ends.
func extRoute(t *testing.T, ip, node string) {
	t.Helper()
	var via string
	for i, n := range lab.NodeNames() {
		if n == node {
			via = labctl.NodeAddr(i + 1).String()
		}
	}
	if via == "" {
		t.Fatalf("no node %s", node)
	}
	t.Cleanup(func() {
		_, _ = lab.Output(context.Background(), "vm", "ip", "route", "del", ip+"/32")
	})
	if _, err := lab.Output(context.Background(), "vm", "ip", "route", "replace", ip+"/32", "via", via); err != nil {
		t.Fatalf("step: routing %s through %s in the VM: %v", ip, node, err)
	}
}

// extNodeAddr is a node's IPv4 address.
func extNodeAddr(node string) string {
	for i, n := range lab.NodeNames() {
		if n == node {
			return labctl.NodeAddr(i + 1).String()
		}
	}
	return ""
}

// extTry sends count TCP requests from target to addr, each bounded by
// timeout, and returns the answers and the failures without judging them.
func extTry(t *testing.T, target, addr string, count int, timeout string) ([]answer, []string) {
	t.Helper()
	out, err := lab.Output(context.Background(), target, echoBin, "client", "--proto", "tcp", "--addr", addr,
		"--count", fmt.Sprint(count), "--timeout", timeout)
	var answers []answer
	var failed []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case f[0] == "ERR":
			failed = append(failed, line)
		case len(f) >= 2:
			answers = append(answers, answer{pod: f[0], client: f[1]})
		}
	}
	if len(answers)+len(failed) != count {
		t.Fatalf("step: running the echo client at %s to %s: %d answers, %d failures of %d, err %v", target, addr, len(answers), len(failed), count, err)
	}
	return answers, failed
}

// extAnswered waits until count TCP requests from target to addr all
// succeed (the proxies may still be programming what the case waited for
// last), then checks that exactly the wanted pods answered (any, for nil
// want), and returns the answers.
func extAnswered(t *testing.T, what, target, addr string, count int, want []string) []answer {
	t.Helper()
	start := time.Now()
	deadline := start.Add(propagateTimeout)
	for {
		answers, failed := extTry(t, target, addr, count, "2s")
		if len(failed) == 0 {
			if d := time.Since(start); d > 5*time.Second {
				t.Logf("%s: answered after %.1fs of retries", what, d.Seconds())
			}
			if want != nil {
				requireAnsweredBy(t, what, answers, want)
			}
			return answers
		}
		if time.Now().After(deadline) {
			t.Fatalf("step: %s: %d of %d requests from %s to %s failed for %s: %q", what, len(failed), count, target, addr, propagateTimeout, failed)
		}
		time.Sleep(time.Second)
	}
}

// How a request that must not get through fails.
type extFailKind int

const (
	extRefused  extFailKind = iota // rejected at once: connection refused (an ICMP port unreachable or a RST)
	extDropped                     // no answer at all: the request times out
	extNoAnswer                    // either: no answer reaches the client
)

func (k extFailKind) String() string {
	return [...]string{"refused", "dropped", "not answered"}[k]
}

// extFails checks that TCP requests from target to addr fail the given way.
// Call it once the kernel state that makes them fail is in place.
func extFails(t *testing.T, what, target, addr string, kind extFailKind) {
	t.Helper()
	const count = 2
	answers, failed := extTry(t, target, addr, count, extFailTimeout)
	if len(answers) > 0 {
		t.Fatalf("step: %s: %s -> %s must be %s, but %d of %d requests were answered: %v (failures %q)", what, target, addr, kind, len(answers), count, answers, failed)
	}
	for _, f := range failed {
		isRefused := strings.Contains(f, "connection refused")
		isTimeout := strings.Contains(f, "timeout") || strings.Contains(f, "deadline exceeded")
		if (kind == extRefused && !isRefused) || (kind == extDropped && !isTimeout) {
			t.Fatalf("step: %s: %s -> %s must be %s, but failed with %q", what, target, addr, kind, failed)
		}
	}
	t.Logf("%s: %s -> %s %s as expected: %q", what, target, addr, kind, failed)
}

// extRequireClient checks the source address every answering pod saw.
func extRequireClient(t *testing.T, what string, answers []answer, ip string, want bool) {
	t.Helper()
	for _, a := range answers {
		if strings.HasPrefix(a.client, ip+":") != want {
			verb := "saw"
			if want {
				verb = "did not see"
			}
			t.Fatalf("%s: pod %s saw client %s: it %s the client's address %s", what, a.pod, a.client, verb, ip)
		}
	}
}

// extWaitVS waits until one node's virtual server has exactly the wanted real
// servers (an empty, non-nil want: present with none; nil: absent).
func extWaitVS(t *testing.T, node, proto, vip string, want []string) {
	t.Helper()
	start := time.Now()
	if err := lab.WaitIPVSRealServers(context.Background(), node, proto, vip, want, propagateTimeout); err != nil {
		t.Fatalf("step: %s virtual server %s %s: %v", node, proto, vip, err)
	}
	t.Logf("%s: %s %s has real servers %v (waited %.1fs)", node, proto, vip, want, time.Since(start).Seconds())
}

// extWaitBound waits until ip is (or, with bound false, is not) an address of
// a node's kube-ipvs0.
func extWaitBound(t *testing.T, node, ip string, bound bool) {
	t.Helper()
	deadline := time.Now().Add(propagateTimeout)
	for {
		out := nodeOutput(t, node, "ip", "-o", "addr", "show", "dev", "kube-ipvs0")
		if strings.Contains(out, " "+ip+"/32 ") == bound {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("step: %s: %s bound on kube-ipvs0 is %v, want %v:\n%s", node, ip, !bound, bound, out)
		}
		time.Sleep(time.Second)
	}
}

// extWaitIPSet waits until a node's ipset lists (or, absent, no longer lists)
// every entry.
func extWaitIPSet(t *testing.T, node, set string, entries []string, absent bool) {
	t.Helper()
	waitLines(t, node, "ipset list "+set, []string{"ipset", "list", set}, entries, absent)
}

// An external IP (spec.externalIPs) is served by every node: a virtual
// server on it with the Service's endpoints, the address bound on
// kube-ipvs0, listed in KUBE-EXTERNAL-IP (masqueraded: with
// externalTrafficPolicy Cluster the endpoint may be on another node) and
// accepted from off the node. It answers an external client whichever node
// the router sends it to, and nodes and pods too.
func TestExternalIPs(t *testing.T) {
	app := newExtApp(t, "e2e-externalip", 2, "", map[string]func(*v1.Service){
		"echo": func(s *v1.Service) { s.Spec.ExternalIPs = []string{extExternalIP} },
	})
	vip := extExternalIP + ":80"
	for _, n := range lab.NodeNames() {
		extWaitVS(t, n, "TCP", vip, app.podIPs())
		extWaitVS(t, n, "UDP", vip, app.podIPs())
		var want []string
		for _, flag := range []string{"-t", "-u"} {
			want = append(want, fmt.Sprintf("-A %s %s -s rr", flag, vip))
			for _, ip := range app.podIPs() {
				want = append(want, fmt.Sprintf("-a %s %s -r %s:8080 -m -w 1", flag, vip, ip))
			}
		}
		requireLines(t, n+": ipvsadm -Sn", nodeOutput(t, n, "ipvsadm", "-Sn"), want, false)
		extWaitBound(t, n, extExternalIP, true)
		extWaitIPSet(t, n, "KUBE-EXTERNAL-IP", []string{extExternalIP + ",tcp:80", extExternalIP + ",udp:80"}, false)
		extWaitIPSet(t, n, "KUBE-IPVS-IPS", []string{extExternalIP}, false)
		requireRule(t, n, "nat", "KUBE-SERVICES", "--match-set KUBE-EXTERNAL-IP dst,dst", "-j KUBE-MARK-MASQ")
		requireRule(t, n, "nat", "KUBE-SERVICES", "--match-set KUBE-EXTERNAL-IP dst,dst", "! --physdev-is-in", "! --src-type LOCAL", "-j ACCEPT")
		requireRule(t, n, "nat", "KUBE-SERVICES", "--match-set KUBE-EXTERNAL-IP dst,dst", "--dst-type LOCAL", "-j ACCEPT")
		requireRule(t, n, "filter", "KUBE-IPVS-FILTER", "--match-set KUBE-EXTERNAL-IP dst,dst", "-j RETURN")
	}

	// From the external client, through each node in turn.
	for _, n := range lab.NodeNames() {
		extRoute(t, extExternalIP, n)
		what := fmt.Sprintf("external client -> %s through %s", vip, n)
		answers := extAnswered(t, what, "vm", vip, 3*len(app.pods), app.podNames())
		// externalTrafficPolicy Cluster: masqueraded, the pods never see
		// the client's address.
		extRequireClient(t, what, answers, extClient, false)
	}
	// From every node and from a pod: their own node balances.
	for _, n := range lab.NodeNames() {
		answers := request(t, n, "tcp", vip, 3*len(app.pods))
		requireAnsweredBy(t, n+" -> "+vip, answers, app.podNames())
	}
	answers := request(t, app.pod(), "tcp", vip, 3*len(app.pods))
	requireAnsweredBy(t, app.pod()+" -> "+vip, answers, app.podNames())
}

// A load-balancer ingress IP (type LoadBalancer, status written as a cloud
// controller would) with loadBalancerSourceRanges: every node serves it
// (virtual server, kube-ipvs0, KUBE-LOAD-BALANCER), and only sources in the
// ranges get through: KUBE-PROXY-FIREWALL sends the IP:port of
// KUBE-LOAD-BALANCER-FW to KUBE-SOURCE-RANGES-FIREWALL, which returns for
// the (IP, port, source CIDR) entries of KUBE-LOAD-BALANCER-SOURCE-CIDR and
// drops the rest; a node outside the ranges is kept out by
// KUBE-IPVS-OUT-FILTER (its own traffic to the IP has the IP as source).
// Widening the ranges lets the pods in. An ingress with ipMode Proxy is the
// load balancer's business: not bound, no virtual server.
func TestLoadBalancerSourceRanges(t *testing.T) {
	ctx := context.Background()
	app := newExtApp(t, "e2e-lbranges", 2, "", map[string]func(*v1.Service){
		"echo": func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{extClient + "/32"}
		},
	})
	app.setIngress(t, "echo", v1.LoadBalancerIngress{IP: extLBIP},
		v1.LoadBalancerIngress{IP: extLBProxyIP, IPMode: ptr.To(v1.LoadBalancerIPModeProxy)})
	vip := extLBIP + ":80"
	for _, n := range lab.NodeNames() {
		extWaitVS(t, n, "TCP", vip, app.podIPs())
		extWaitVS(t, n, "UDP", vip, app.podIPs())
		extWaitBound(t, n, extLBIP, true)
		extWaitIPSet(t, n, "KUBE-LOAD-BALANCER", []string{extLBIP + ",tcp:80", extLBIP + ",udp:80"}, false)
		extWaitIPSet(t, n, "KUBE-LOAD-BALANCER-FW", []string{extLBIP + ",tcp:80", extLBIP + ",udp:80"}, false)
		extWaitIPSet(t, n, "KUBE-LOAD-BALANCER-SOURCE-CIDR", []string{extLBIP + ",tcp:80," + extClient, extLBIP + ",udp:80," + extClient}, false)
		extWaitIPSet(t, n, "KUBE-IPVS-IPS", []string{extLBIP}, false)
		requireRule(t, n, "nat", "KUBE-SERVICES", "--match-set KUBE-LOAD-BALANCER dst,dst", "-j KUBE-LOAD-BALANCER")
		requireRule(t, n, "nat", "KUBE-LOAD-BALANCER", "-j KUBE-MARK-MASQ")
		requireRule(t, n, "filter", "KUBE-PROXY-FIREWALL", "--match-set KUBE-LOAD-BALANCER-FW dst,dst", "-j KUBE-SOURCE-RANGES-FIREWALL")
		requireRule(t, n, "filter", "KUBE-SOURCE-RANGES-FIREWALL", "--match-set KUBE-LOAD-BALANCER-SOURCE-CIDR dst,dst,src", "-j RETURN")
		requireRule(t, n, "filter", "KUBE-SOURCE-RANGES-FIREWALL", "-j DROP")
		// As iptables-save prints it: -s with /32, --vaddr without.
		requireRule(t, n, "filter", "KUBE-IPVS-OUT-FILTER", "-s "+extLBIP+"/32", "-m ipvs", "--vproto 6", "--vaddr "+extLBIP+" ", "--vport 80", "-j DROP")
		requireRule(t, n, "filter", "INPUT", "-j KUBE-PROXY-FIREWALL")
		requireRule(t, n, "filter", "OUTPUT", "-j KUBE-IPVS-OUT-FILTER")

		// ipMode Proxy: the load balancer proxies to the nodes itself; the
		// IP is not the nodes' to answer (both proxies skip it, as the
		// service cache's own Problems note says). Checked once the VIP
		// ingress of the same status is programmed.
		extWaitBound(t, n, extLBProxyIP, false)
		extWaitVS(t, n, "TCP", extLBProxyIP+":80", nil)
		requireLines(t, n+": ipset list KUBE-LOAD-BALANCER", nodeOutput(t, n, "ipset", "list", "KUBE-LOAD-BALANCER"),
			[]string{extLBProxyIP + ",tcp:80"}, true)
	}

	// The external client is in the ranges: through either node.
	for _, n := range lab.NodeNames() {
		extRoute(t, extLBIP, n)
		extAnswered(t, "external client (in the source ranges) -> "+vip+" through "+n, "vm", vip, 3*len(app.pods), app.podNames())
	}
	// A pod (10.244.x) is not: KUBE-SOURCE-RANGES-FIREWALL drops it.
	extFails(t, "pod outside the source ranges", app.pod(), vip, extDropped)
	// Nor is a node: KUBE-IPVS-OUT-FILTER drops it.
	for _, n := range lab.NodeNames() {
		extFails(t, "node outside the source ranges", n, vip, extDropped)
	}

	// Widen the ranges to the pod network: the pods get through, the nodes
	// are still kept out.
	s, err := cs.CoreV1().Services(app.ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Spec.LoadBalancerSourceRanges = []string{extClient + "/32", labctl.ClusterCIDR}
	if _, err := cs.CoreV1().Services(app.ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("step: widening the source ranges: %v", err)
	}
	for _, n := range lab.NodeNames() {
		extWaitIPSet(t, n, "KUBE-LOAD-BALANCER-SOURCE-CIDR", []string{extLBIP + ",tcp:80," + labctl.ClusterCIDR, extLBIP + ",tcp:80," + extClient}, false)
	}
	for _, ip := range app.podIPs() {
		pod := "pod/" + app.ns + "/" + app.pods[ip]
		extAnswered(t, pod+" (now in the source ranges) -> "+vip, pod, vip, 3*len(app.pods), app.podNames())
	}
	extAnswered(t, "external client (still in the source ranges) -> "+vip, "vm", vip, 3*len(app.pods), app.podNames())
	for _, n := range lab.NodeNames() {
		extFails(t, "node still outside the source ranges", n, vip, extDropped)
	}

	// Ours only (upstream logs no such line): with the firewall in place
	// and nothing changing, a periodic full resync finds the rules as it
	// left them and rewrites nothing. (KUBE-IPVS-OUT-FILTER planned in
	// another form than iptables-save prints it was rewritten by every
	// sync.)
	if lab.Proxy == "ours" {
		extWaitQuietFullSync(t)
	}
}

// extWaitQuietFullSync waits, in our proxy's log on every node (-v=2), for
// a full resync that started after the call and changed no iptables rule or
// ipset entry. A full resync runs every --ipvs-sync-period (30 s); one that
// had something to do (another test's namespace going away) is no reason to
// fail, so the wait covers a few.
func extWaitQuietFullSync(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	logLines := func(node string) []string {
		out, err := lab.Output(ctx, "vm", "cat", labctl.ProxyLogPath(node))
		if err != nil {
			t.Fatalf("step: reading %s's proxy log: %v", node, err)
		}
		return strings.Split(out, "\n")
	}
	from := map[string]int{}
	for _, n := range lab.NodeNames() {
		from[n] = len(logLines(n))
	}
	start := time.Now()
	deadline := start.Add(100 * time.Second)
	for _, n := range lab.NodeNames() {
		for {
			lines := logLines(n)
			if from[n] > len(lines) {
				from[n] = 0 // the log was truncated
			}
			var seen []string
			quiet := ""
			for _, l := range lines[from[n]:] {
				if strings.Contains(l, `"Synced"`) && strings.Contains(l, "full=true") {
					seen = append(seen, l)
					if strings.Contains(l, "iptablesChanged=false") {
						quiet = l
						break
					}
				}
			}
			if quiet != "" {
				t.Logf("%s: a full resync changed nothing (%.0fs): %s", n, time.Since(start).Seconds(), quiet)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("step: %s: no full resync in %.0fs left the iptables rules and ipsets alone; full resyncs:\n%s",
					n, time.Since(start).Seconds(), strings.Join(seen, "\n"))
			}
			time.Sleep(2 * time.Second)
		}
	}
}

// externalTrafficPolicy Local on a LoadBalancer Service whose only pod runs
// on node1: external traffic reaching node1 (NodePort, load-balancer IP) is
// not masqueraded (KUBE-NODE-PORT-LOCAL-TCP and KUBE-LOAD-BALANCER-LOCAL
// return before KUBE-MARK-MASQ), so the pod sees the client's own address.
// The health check node port tells the load balancer which nodes have a
// local endpoint: 200 on node1, 503 on node2.
//
// Traffic reaching node2, which has no local endpoint, differs on purpose:
// ours keeps the virtual server with no real server, so it is refused, as
// upstream's iptables and nftables modes do (pkg/ipvs/select.go); upstream's
// IPVS mode falls back to the cluster endpoints (kubernetes PR 97081, so
// that node2's pods can use the external address), forwards the connection
// to node1's pod unmasqueraded, and the pod's reply, from its own address,
// goes straight back to the client, which discards it: no answer.
func TestExternalTrafficPolicyLocal(t *testing.T) {
	app := newExtApp(t, "e2e-etplocal", 1, "node1", map[string]func(*v1.Service){
		"echo": func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		},
	})
	app.setIngress(t, "echo", v1.LoadBalancerIngress{IP: extLocalLBIP})
	svc := app.svcs["echo"]
	hcPort := svc.Spec.HealthCheckNodePort
	if hcPort == 0 {
		t.Fatalf("step: the API server allocated no healthCheckNodePort to a LoadBalancer Service with externalTrafficPolicy Local")
	}
	np := app.nodePort("echo")
	pod := app.podIPs()
	local, remote := "node1", "node2"
	localNP := fmt.Sprintf("%s:%d", extNodeAddr(local), np)
	remoteNP := fmt.Sprintf("%s:%d", extNodeAddr(remote), np)
	lbVIP := extLocalLBIP + ":80"

	extWaitVS(t, local, "TCP", localNP, pod)
	extWaitVS(t, local, "TCP", lbVIP, pod)
	remoteWant := []string{} // ours: present, no real server
	if lab.Proxy == "upstream" {
		remoteWant = pod // upstream IPVS: the cluster endpoints (see above)
	}
	extWaitVS(t, remote, "TCP", remoteNP, remoteWant)
	extWaitVS(t, remote, "TCP", lbVIP, remoteWant)
	for _, n := range lab.NodeNames() {
		// The cluster IP keeps internalTrafficPolicy Cluster.
		extWaitVS(t, n, "TCP", svc.Spec.ClusterIP+":80", pod)
		extWaitIPSet(t, n, "KUBE-NODE-PORT-LOCAL-TCP", []string{fmt.Sprint(np)}, false)
		extWaitIPSet(t, n, "KUBE-NODE-PORT-TCP", []string{fmt.Sprint(np)}, false)
		extWaitIPSet(t, n, "KUBE-LOAD-BALANCER-LOCAL", []string{extLocalLBIP + ",tcp:80"}, false)
		extWaitIPSet(t, n, "KUBE-HEALTH-CHECK-NODE-PORT", []string{fmt.Sprint(hcPort)}, false)
		requireRule(t, n, "nat", "KUBE-NODE-PORT", "--match-set KUBE-NODE-PORT-LOCAL-TCP dst", "-j RETURN")
		requireRule(t, n, "nat", "KUBE-LOAD-BALANCER", "--match-set KUBE-LOAD-BALANCER-LOCAL dst,dst", "-j RETURN")
		requireRule(t, n, "filter", "KUBE-NODE-PORT", "--match-set KUBE-HEALTH-CHECK-NODE-PORT dst", "-j ACCEPT")
	}

	// Through node1: answered, and the pod sees the client's address.
	what := "external client -> NodePort " + localNP
	answers := extAnswered(t, what, "vm", localNP, 3, app.podNames())
	extRequireClient(t, what, answers, extClient, true)
	extRoute(t, extLocalLBIP, local)
	what = "external client -> load-balancer IP " + lbVIP + " through " + local
	answers = extAnswered(t, what, "vm", lbVIP, 3, app.podNames())
	extRequireClient(t, what, answers, extClient, true)

	// Through node2 (see the comment above the test).
	what = "external client -> NodePort " + remoteNP + " (no local endpoint)"
	if lab.Proxy == "upstream" {
		extFails(t, what, "vm", remoteNP, extNoAnswer)
	} else {
		extFails(t, what, "vm", remoteNP, extRefused)
	}

	// The health check node port, as a load balancer probes it.
	hc := func(node string, wantCode, wantEndpoints int) {
		t.Helper()
		url := fmt.Sprintf("http://%s:%d/", extNodeAddr(node), hcPort)
		deadline := time.Now().Add(propagateTimeout)
		for {
			code, hdr, body, err := extHTTPGet(t, "vm", url)
			var h struct {
				Service struct {
					Namespace string `json:"namespace"`
					Name      string `json:"name"`
				} `json:"service"`
				LocalEndpoints      int  `json:"localEndpoints"`
				ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
			}
			var jerr error
			if err == nil {
				jerr = json.Unmarshal([]byte(body), &h)
			}
			ok := err == nil && jerr == nil && code == wantCode &&
				h.Service.Namespace == app.ns && h.Service.Name == "echo" &&
				h.LocalEndpoints == wantEndpoints && h.ServiceProxyHealthy &&
				hdr.Get("X-Load-Balancing-Endpoint-Weight") == fmt.Sprint(wantEndpoints) &&
				hdr.Get("Content-Type") == "application/json"
			if ok {
				t.Logf("%s health check %s: %d, X-Load-Balancing-Endpoint-Weight %s, %s", node, url, code,
					hdr.Get("X-Load-Balancing-Endpoint-Weight"), strings.Join(strings.Fields(body), " "))
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("step: %s health check %s: status %d, headers %v, body %q (err %v, json %v); want %d with localEndpoints %d, serviceProxyHealthy true, X-Load-Balancing-Endpoint-Weight %d",
					node, url, code, hdr, body, err, jerr, wantCode, wantEndpoints, wantEndpoints)
			}
			time.Sleep(time.Second)
		}
	}
	hc(local, http.StatusOK, 1)
	hc(remote, http.StatusServiceUnavailable, 0)
}

// extHTTPGet runs curl at target and parses its response.
func extHTTPGet(t *testing.T, target, url string) (int, http.Header, string, error) {
	t.Helper()
	out, err := lab.Output(context.Background(), target, "curl", "-s", "-i", "-m", "5", url)
	if err != nil {
		return 0, nil, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
	if err != nil {
		return 0, nil, "", fmt.Errorf("parsing %q: %w", out, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, err = bufio.NewReader(resp.Body).WriteTo(&b)
	return resp.StatusCode, resp.Header, b.String(), err
}

// internalTrafficPolicy Local, pods on node1 only: the cluster IP reaches
// the local pod from node1 and nothing from node2, where the virtual server
// has no real server and the connection is refused (the API's meaning of
// Local: never another node's endpoint).
//
// Two Services select the same pods. For "internal" (type ClusterIP) both
// proxies agree. For "nodeport" (type NodePort, externalTrafficPolicy
// Cluster) upstream's IPVS mode differs: CategorizeEndpoints computes the
// cluster endpoints too, since the port is reachable from outside, and
// syncEndpoint falls back to them when there is no local endpoint (the
// fallback meant for externalTrafficPolicy, kubernetes PR 97081, applied to
// the cluster IP as well), so node2 reaches node1's pod. Ours does not fall
// back for internal traffic, as upstream's iptables and nftables modes.
func TestInternalTrafficPolicyLocal(t *testing.T) {
	local := func(s *v1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	}
	app := newExtApp(t, "e2e-itplocal", 1, "node1", map[string]func(*v1.Service){
		"internal": func(s *v1.Service) {
			local(s)
			s.Spec.Type = v1.ServiceTypeClusterIP
			for i := range s.Spec.Ports {
				s.Spec.Ports[i].NodePort = 0
			}
		},
		"nodeport": local,
	})
	pod := app.podIPs()
	for _, name := range []string{"internal", "nodeport"} {
		vip := app.svcs[name].Spec.ClusterIP + ":80"
		remoteWant := []string{}
		if name == "nodeport" && lab.Proxy == "upstream" {
			remoteWant = pod
		}
		extWaitVS(t, "node1", "TCP", vip, pod)
		extWaitVS(t, "node2", "TCP", vip, remoteWant)
		for _, n := range lab.NodeNames() {
			extWaitIPSet(t, n, "KUBE-CLUSTER-IP", []string{app.svcs[name].Spec.ClusterIP + ",tcp:80"}, false)
		}

		extAnswered(t, name+": node1 -> local pod through "+vip, "node1", vip, 3, app.podNames())
		extAnswered(t, name+": pod on node1 -> "+vip, app.pod(), vip, 3, app.podNames())
		what := name + ": node2 (no local endpoint) -> " + vip
		if len(remoteWant) > 0 {
			extAnswered(t, what+" (upstream IPVS falls back to the cluster endpoints)", "node2", vip, 3, app.podNames())
		} else {
			extFails(t, what, "node2", vip, extRefused)
		}
	}
}

// KUBE-IPVS-FILTER keeps the VIPs on kube-ipvs0 from exposing the node's own
// services (kubernetes issue 72236): a new connection to a VIP on a port no
// Service uses is rejected, even though a process on the node listens on
// that port on every address; the node's own address still reaches it, and
// the VIP's Service port still works.
func TestIPVSFilter(t *testing.T) {
	ctx := context.Background()
	app := newExtApp(t, "e2e-ipvsfilter", 1, "node1", map[string]func(*v1.Service){"echo": nil})
	const node = "node1"
	cip := app.svcs["echo"].Spec.ClusterIP
	extWaitVS(t, node, "TCP", cip+":80", app.podIPs())
	extWaitIPSet(t, node, "KUBE-CLUSTER-IP", []string{cip + ",tcp:80"}, false)
	extWaitIPSet(t, node, "KUBE-IPVS-IPS", []string{cip}, false)
	requireRule(t, node, "filter", "INPUT", "-j KUBE-IPVS-FILTER")
	requireRule(t, node, "filter", "KUBE-IPVS-FILTER", "--match-set KUBE-CLUSTER-IP dst,dst", "-j RETURN")
	requireRule(t, node, "filter", "KUBE-IPVS-FILTER", "--ctstate NEW", "--match-set KUBE-IPVS-IPS dst", "-j REJECT")

	// A host service on node1, listening on every address.
	daemon := "e2e-hostsvc-" + node
	if _, err := lab.Agent().StartDaemon(ctx, agent.DaemonSpec{Name: daemon, Netns: node,
		Argv: []string{echoBin, "serve", "--tcp", fmt.Sprint(extFilterPort), "--udp", "", "--sctp", ""}}); err != nil {
		t.Fatalf("step: starting a host service on %s:%d: %v", node, extFilterPort, err)
	}
	t.Cleanup(func() {
		_, _ = lab.Agent().StopDaemon(context.Background(), agent.SignalRequest{Name: daemon})
	})
	hostAddr := fmt.Sprintf("%s:%d", extNodeAddr(node), extFilterPort)
	hostAnswers := extAnswered(t, "node1 -> its own host service "+hostAddr, node, hostAddr, 1, nil)
	host := []string{hostAnswers[0].pod} // the host service answers with the VM's host name
	if host[0] == app.podNames()[0] {
		t.Fatalf("the host service answered as the pod %s", host[0])
	}

	extAnswered(t, "pod -> node1's host service "+hostAddr, app.pod(), hostAddr, 2, host)
	extFails(t, fmt.Sprintf("pod -> cluster IP %s on port %d (no Service port)", cip, extFilterPort),
		app.pod(), fmt.Sprintf("%s:%d", cip, extFilterPort), extRefused)
	extAnswered(t, "pod -> cluster IP "+cip+":80 (the Service port)", app.pod(), cip+":80", 2, app.podNames())
}
