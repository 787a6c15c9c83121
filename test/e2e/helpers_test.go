//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// Time budgets. Everything in the VM runs under software emulation, so these
// are generous; the scale test logs how long propagation actually took.
const (
	podsReadyTimeout = 3 * time.Minute
	propagateTimeout = 90 * time.Second
)

const echoBin = "/run/lab/bin/labecho"

// echoApp is a Deployment of the echo server behind a NodePort Service.
type echoApp struct {
	ns, name string
	svc      *v1.Service
	pods     map[string]string // pod IP -> pod name
}

// newEchoApp deploys an echo app in a fresh namespace and waits until its
// endpoints are ready; the namespace is deleted when the test ends. On
// failure the lab report (IPVS tables, proxy logs) is printed.
func newEchoApp(t *testing.T, ns string, replicas int) *echoApp {
	t.Helper()
	ctx := context.Background()
	reportOnFailure(t)
	if err := labctl.EnsureNamespace(ctx, cs, ns); err != nil {
		t.Fatalf("creating namespace %s: %v", ns, err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	a := &echoApp{ns: ns, name: "echo"}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, labctl.EchoDeployment(ns, a.name, int32(replicas)), metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the echo Deployment: %v", err)
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, labctl.EchoService(ns, a.name), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the echo Service: %v", err)
	}
	a.svc = svc
	a.waitPods(t, replicas)
	a.waitProgrammed(t)
	return a
}

// waitProgrammed waits until every node programs the Service completely:
// the virtual servers with the ready pods and the KUBE-CLUSTER-IP entries
// (a proxy may fill its ipsets after IPVS; until then a pod's connection to
// the ClusterIP can be refused by the KUBE-IPVS-FILTER rules).
func (a *echoApp) waitProgrammed(t *testing.T) {
	t.Helper()
	vip := a.clusterIP() + ":80"
	waitVS(t, "TCP", vip, a.podIPs())
	waitVS(t, "UDP", vip, a.podIPs())
	waitClusterIPSet(t, a.clusterIP(), "tcp", "udp")
}

// waitClusterIPSet waits until every node's KUBE-CLUSTER-IP set lists the
// cluster IP with port 80 for each protocol.
func waitClusterIPSet(t *testing.T, cip string, protos ...string) {
	t.Helper()
	var want []string
	for _, p := range protos {
		want = append(want, cip+","+p+":80")
	}
	for _, n := range lab.NodeNames() {
		waitLines(t, n, "ipset list KUBE-CLUSTER-IP", []string{"ipset", "list", "KUBE-CLUSTER-IP"}, want, false)
	}
}

// waitPods waits for n ready endpoints and records the pods behind them.
func (a *echoApp) waitPods(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	ips, err := lab.WaitReadyEndpoints(ctx, a.ns, a.name, n, podsReadyTimeout)
	if err != nil {
		t.Fatalf("step: waiting for %d ready endpoints of %s/%s: %v", n, a.ns, a.name, err)
	}
	names, err := lab.PodIPNames(ctx, a.ns, "app="+a.name)
	if err != nil {
		t.Fatal(err)
	}
	a.pods = map[string]string{}
	for _, ip := range ips {
		a.pods[ip] = names[ip]
	}
}

func (a *echoApp) clusterIP() string { return a.svc.Spec.ClusterIP }

func (a *echoApp) nodePort(proto v1.Protocol) int32 {
	for _, p := range a.svc.Spec.Ports {
		if p.Protocol == proto {
			return p.NodePort
		}
	}
	return 0
}

func (a *echoApp) podIPs() []string {
	ips := make([]string, 0, len(a.pods))
	for ip := range a.pods {
		ips = append(ips, ip)
	}
	sort.Strings(ips)
	return ips
}

func (a *echoApp) podNames() []string {
	names := make([]string, 0, len(a.pods))
	for _, n := range a.pods {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// answer is one reply of the echo server: who answered and whom it saw.
type answer struct{ pod, client string }

// request sends count requests from target (a node or pod/NS/NAME) with the
// echo client and returns the answers; any failed request fails the test.
func request(t *testing.T, target, proto, addr string, count int) []answer {
	t.Helper()
	out, err := lab.Output(context.Background(), target, echoBin, "client", "--proto", proto, "--addr", addr, "--count", fmt.Sprint(count))
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
	if err != nil || len(failed) > 0 || len(answers) != count {
		t.Fatalf("step: %d %s requests from %s to %s: %d answered, failures %q, err %v", count, proto, target, addr, len(answers), failed, err)
	}
	return answers
}

// requireAnsweredBy checks that exactly the wanted pods answered.
func requireAnsweredBy(t *testing.T, what string, answers []answer, want []string) {
	t.Helper()
	seen := map[string]int{}
	for _, a := range answers {
		seen[a.pod]++
	}
	got := make([]string, 0, len(seen))
	for p := range seen {
		got = append(got, p)
	}
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s: answered by %v (counts %v), want every one of %v", what, got, seen, want)
	}
}

// waitVS waits until every node's virtual server has the wanted real servers.
func waitVS(t *testing.T, proto, vip string, want []string) {
	t.Helper()
	for _, n := range lab.NodeNames() {
		start := time.Now()
		if err := lab.WaitIPVSRealServers(context.Background(), n, proto, vip, want, propagateTimeout); err != nil {
			t.Fatalf("step: %s virtual server %s %s: %v", n, proto, vip, err)
		}
		t.Logf("%s: %s %s has real servers %v (waited %.1fs)", n, proto, vip, want, time.Since(start).Seconds())
	}
}

// nodeOutput runs a command on a node and fails the test on error.
func nodeOutput(t *testing.T, node string, argv ...string) string {
	t.Helper()
	out, err := lab.Output(context.Background(), node, argv...)
	if err != nil {
		t.Fatalf("step: %v on %s: %v", argv, node, err)
	}
	return out
}

// requireLines checks that the output holds every wanted line (or, with
// absent, none of them); lines are compared after trimming spaces.
func requireLines(t *testing.T, what, out string, want []string, absent bool) {
	t.Helper()
	have := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		have[strings.TrimSpace(l)] = true
	}
	for _, w := range want {
		if have[w] == absent {
			verb := "lacks"
			if absent {
				verb = "still has"
			}
			t.Fatalf("%s %s %q; it is:\n%s", what, verb, w, out)
		}
	}
}

// waitLines polls a command on a node until requireLines would pass.
func waitLines(t *testing.T, node, what string, argv []string, want []string, absent bool) {
	t.Helper()
	deadline := time.Now().Add(propagateTimeout)
	for {
		out := nodeOutput(t, node, argv...)
		ok := true
		have := map[string]bool{}
		for _, l := range strings.Split(out, "\n") {
			have[strings.TrimSpace(l)] = true
		}
		for _, w := range want {
			if have[w] == absent {
				ok = false
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			requireLines(t, node+": "+what, out, want, absent)
		}
		time.Sleep(time.Second)
	}
}

// requireRule checks that `iptables-save -t TABLE` on a node has a rule in
// chain that contains every fragment.
func requireRule(t *testing.T, node, table, chain string, fragments ...string) {
	t.Helper()
	out := nodeOutput(t, node, "iptables-save", "-t", table)
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "-A "+chain+" ") {
			continue
		}
		all := true
		for _, f := range fragments {
			if !strings.Contains(l, f) {
				all = false
				break
			}
		}
		if all {
			return
		}
	}
	t.Fatalf("%s: iptables-save -t %s has no rule in %s with %q:\n%s", node, table, chain, fragments, out)
}

// reportOnFailure prints the lab report when the test fails.
func reportOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			t.Log(lab.Report(ctx))
		}
	})
}
