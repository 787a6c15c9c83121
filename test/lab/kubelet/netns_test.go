package kubelet

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/echo"
)

// echoEnv makes the test binary act as labecho, so the real test needs no
// separately built binary: the kubelet runs it as the echo binary with the
// pod's env, which carries this variable.
const echoEnv = "LABKUBELET_TEST_ECHO"

func TestMain(m *testing.M) {
	if os.Getenv(echoEnv) == "1" {
		os.Exit(echo.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// syncBuffer collects the kubelet's log for printing on failure.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last state: %s", timeout, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test creates network namespaces and veths and must run as root (CI runs as root)")
	}
	if _, err := findIP(); err != nil {
		t.Fatalf("this test needs iproute2: %v", err)
	}
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// nodeIP6 is the test node's IPv6 address.
const nodeIP6 = "fd00:172:30::99"

// lab is one test's node: a node namespace, a fake API and a state dir.
type lab struct {
	t        *testing.T
	node     string
	nodeNS   string
	cidr     string // IPv4 pod CIDR
	cidr6    string // IPv6 pod CIDR: the node is dual-stack, as in the lab
	stateDir string
	client   *fake.Clientset
	watching chan struct{}
	logs     *syncBuffer
	testBin  string
	uids     []string // every pod UID created, for cleanup
}

func newLab(t *testing.T) *lab {
	requireRoot(t)
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	l := &lab{
		t: t, node: "testnode", nodeNS: "ltn" + hex.EncodeToString(suffix),
		// A different CIDR per run keeps parallel runs apart.
		cidr:     fmt.Sprintf("10.244.%d.0/24", 100+int(suffix[0])%100),
		cidr6:    fmt.Sprintf("fd00:10:244:%d::/64", 100+int(suffix[0])%100),
		stateDir: t.TempDir(),
		logs:     &syncBuffer{},
		watching: make(chan struct{}, 100),
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	l.testBin = bin
	mustRun(t, "ip", "netns", "add", l.nodeNS)
	mustRun(t, "ip", "-n", l.nodeNS, "link", "set", "lo", "up")
	// The node's own IPv6 address (a lab node has it on its eth0): the
	// source of the node's IPv6 connections to pods.
	mustRun(t, "ip", "-n", l.nodeNS, "addr", "add", nodeIP6+"/128", "dev", "lo", "nodad")
	t.Cleanup(l.cleanup)

	l.client = fake.NewClientset(&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: l.node},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "172.30.0.99"}, {Type: v1.NodeInternalIP, Address: nodeIP6}}},
	})
	// The fake API drops events between an informer's list and its watch;
	// tests create pods only once the watch is there.
	l.client.PrependWatchReactor("pods", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := l.client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		if err != nil {
			return false, nil, err
		}
		select {
		case l.watching <- struct{}{}:
		default:
		}
		return true, w, nil
	})
	return l
}

// cleanup removes everything the test may have left, whatever happened,
// and prints the logs if the test failed.
func (l *lab) cleanup() {
	if l.t.Failed() {
		l.t.Logf("kubelet log:\n%s", l.logs.String())
		logs, _ := filepath.Glob(filepath.Join(l.stateDir, "pods", "*.log"))
		for _, f := range logs {
			b, _ := os.ReadFile(f)
			l.t.Logf("pod log %s:\n%s", filepath.Base(f), b)
		}
	}
	ipc, _ := findIP()
	for _, uid := range l.uids {
		netw := podNetwork{NodeNetns: l.nodeNS, Netns: PodNetnsName(typesUID(uid)), Veth: VethName(typesUID(uid))}
		_ = ipc.teardown(context.Background(), netw)
	}
	_ = exec.Command("ip", "netns", "del", l.nodeNS).Run()
}

// start runs a kubelet until the returned stop is called.
func (l *lab) start(teardownOnExit bool) (stop func()) {
	l.t.Helper()
	k, err := New(l.client, Config{
		NodeName: l.node, PodCIDR: l.cidr + "," + l.cidr6, NodeNetns: l.nodeNS, EchoBinary: l.testBin,
		StateDir: l.stateDir, TeardownOnExit: teardownOnExit, KillWait: 2 * time.Second,
		Logger: log.New(l.logs, "", log.Lmicroseconds),
	})
	if err != nil {
		l.t.Fatal(err)
	}
	for len(l.watching) > 0 {
		<-l.watching
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()
	select {
	case <-l.watching:
	case err := <-done:
		cancel()
		l.t.Fatalf("kubelet stopped: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		l.t.Fatal("kubelet did not start watching pods")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					l.t.Errorf("kubelet Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				l.t.Error("kubelet did not stop")
			}
		})
	}
	l.t.Cleanup(stop)
	return stop
}

func (l *lab) createPod(name string, probe *v1.Probe) *v1.Pod {
	l.t.Helper()
	uid := uuid.NewUUID()
	l.uids = append(l.uids, string(uid))
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: uid},
		Spec: v1.PodSpec{NodeName: l.node, Containers: []v1.Container{{
			Name: "echo", Image: "labecho", Args: []string{"serve", "--sctp", ""},
			Env:            []v1.EnvVar{{Name: echoEnv, Value: "1"}},
			Ports:          []v1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			ReadinessProbe: probe,
		}}},
	}
	created, err := l.client.CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		l.t.Fatal(err)
	}
	return created
}

func (l *lab) get(name string) (*v1.Pod, error) {
	return l.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
}

func (l *lab) waitReady(name string, want bool) *v1.Pod {
	l.t.Helper()
	var pod *v1.Pod
	waitFor(l.t, 30*time.Second, fmt.Sprintf("pod %s ready=%v", name, want), func() (bool, string) {
		p, err := l.get(name)
		if err != nil {
			return false, err.Error()
		}
		pod = p
		return podReady(p.Status) == want && p.Status.PodIP != "", fmt.Sprintf("%+v", p.Status)
	})
	return pod
}

// client runs `labecho client` inside a namespace and returns its lines.
func (l *lab) echoClient(netns string, args ...string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns, l.testBin, "client"}, args...)...)
	cmd.Env = append(os.Environ(), echoEnv+"=1")
	out, err := cmd.Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err != nil {
		return lines, fmt.Errorf("client %v: %v: %q", args, err, out)
	}
	return lines, nil
}

func (l *lab) expectAnswers(netns, proto, podName string, podIP, clientIP string) {
	l.t.Helper()
	addr := netip.AddrPortFrom(netip.MustParseAddr(podIP), 8080).String()
	lines, err := l.echoClient(netns, "--proto", proto, "--addr", addr, "--count", "3")
	if err != nil {
		l.t.Fatal(err)
	}
	for _, line := range lines {
		name, addr, _ := strings.Cut(line, " ")
		ap, perr := netip.ParseAddrPort(addr)
		if name != podName || perr != nil || ap.Addr().String() != clientIP {
			l.t.Fatalf("%s from %s to %s: answer %q, want %q from %s", proto, netns, podName, line, podName, clientIP)
		}
	}
}

func netnsList(t *testing.T) string { return mustRun(t, "ip", "netns", "list") }

func (l *lab) checkGone(pod *v1.Pod) {
	l.t.Helper()
	waitFor(l.t, 15*time.Second, "teardown of "+pod.Name, func() (bool, string) {
		links := mustRun(l.t, "ip", "-n", l.nodeNS, "-o", "link", "show")
		ns := netnsList(l.t)
		_, recErr := os.Stat(filepath.Join(l.stateDir, l.node, PodNetnsName(pod.UID)+".json"))
		gone := !strings.Contains(ns, PodNetnsName(pod.UID)) && !strings.Contains(links, VethName(pod.UID)+"@") &&
			os.IsNotExist(recErr)
		return gone, fmt.Sprintf("netns list %q; node links %q; record %v", ns, links, recErr)
	})
	if _, err := os.Stat(filepath.Dir(UnreadyFile(l.stateDir, pod.Namespace, pod.Name))); !os.IsNotExist(err) {
		l.t.Errorf("control directory of %s left behind: %v", pod.Name, err)
	}
}

func httpProbe() *v1.Probe {
	return &v1.Probe{PeriodSeconds: 1, ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}}
}

func TestKubeletRealNetns(t *testing.T) {
	l := newLab(t)
	stop := l.start(false)

	web := l.createPod("web", httpProbe())
	tcp := l.createPod("tcp", &v1.Probe{PeriodSeconds: 1, ProbeHandler: v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromInt32(8080)}}})
	exe := l.createPod("exec", &v1.Probe{PeriodSeconds: 1, ProbeHandler: v1.ProbeHandler{Exec: &v1.ExecAction{Command: []string{"sh", "-c", "exit 0"}}}})
	noProbe := l.createPod("noprobe", nil)

	gw := ""
	ips := map[string]string{}
	for _, name := range []string{"web", "tcp", "exec", "noprobe"} {
		p := l.waitReady(name, true)
		ip := netip.MustParseAddr(p.Status.PodIP)
		prefix := netip.MustParsePrefix(l.cidr)
		if !prefix.Contains(ip) || ip == prefix.Addr().Next() {
			t.Fatalf("pod %s got IP %s outside %s or the gateway", name, ip, l.cidr)
		}
		if len(p.Status.PodIPs) != 2 || p.Status.PodIPs[0].IP != p.Status.PodIP {
			t.Fatalf("pod %s podIPs %v, want IPv4 %s then IPv6", name, p.Status.PodIPs, p.Status.PodIP)
		}
		ip6 := netip.MustParseAddr(p.Status.PodIPs[1].IP)
		if prefix6 := netip.MustParsePrefix(l.cidr6); !ip6.Is6() || !prefix6.Contains(ip6) || ip6 == prefix6.Addr().Next() {
			t.Fatalf("pod %s got IPv6 %s outside %s or its first address", name, ip6, l.cidr6)
		}
		if _, dup := ips[ip6.String()]; dup {
			t.Fatalf("IP %s given twice", ip6)
		}
		ips[ip6.String()] = name
		if len(p.Status.HostIPs) != 2 || p.Status.HostIPs[1].IP != nodeIP6 {
			t.Fatalf("pod %s hostIPs %v", name, p.Status.HostIPs)
		}
		if p.Status.HostIP != "172.30.0.99" || p.Status.Phase != v1.PodRunning || p.Status.StartTime == nil {
			t.Fatalf("pod %s status %+v", name, p.Status)
		}
		if cs := p.Status.ContainerStatuses; len(cs) != 1 || !cs[0].Ready || cs[0].State.Running == nil {
			t.Fatalf("pod %s container status %+v", name, cs)
		}
		if _, dup := ips[p.Status.PodIP]; dup {
			t.Fatalf("IP %s given twice", p.Status.PodIP)
		}
		ips[p.Status.PodIP] = name
		gw = prefix.Addr().Next().String()
	}
	webIP, tcpIP := l.mustIP("web"), l.mustIP("tcp")
	webIP6, tcpIP6 := l.mustIP6("web"), l.mustIP6("tcp")

	t.Run("node reaches pods over TCP and UDP", func(t *testing.T) {
		// The node's source address towards a pod is the gateway on the
		// pod's veth.
		l.expectAnswers(l.nodeNS, "tcp", "web", webIP, gw)
		l.expectAnswers(l.nodeNS, "udp", "web", webIP, gw)
	})
	t.Run("pod reaches pod through the node with its own IP", func(t *testing.T) {
		l.expectAnswers(PodNetnsName(web.UID), "tcp", "tcp", tcpIP, webIP)
		l.expectAnswers(PodNetnsName(web.UID), "udp", "tcp", tcpIP, webIP)
	})
	t.Run("node reaches pods over IPv6", func(t *testing.T) {
		l.expectAnswers(l.nodeNS, "tcp", "web", webIP6, nodeIP6)
		l.expectAnswers(l.nodeNS, "udp", "web", webIP6, nodeIP6)
	})
	t.Run("pod reaches pod over IPv6 through the node with its own IP", func(t *testing.T) {
		l.expectAnswers(PodNetnsName(web.UID), "tcp", "tcp", tcpIP6, webIP6)
		l.expectAnswers(PodNetnsName(web.UID), "udp", "tcp", tcpIP6, webIP6)
	})
	t.Run("unready file flips readiness", func(t *testing.T) {
		f := UnreadyFile(l.stateDir, "default", "web")
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		l.waitReady("web", false)
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
		l.waitReady("web", true)
	})
	t.Run("crashed process restarts", func(t *testing.T) {
		out := mustRun(t, "ip", "netns", "pids", PodNetnsName(exe.UID))
		for _, p := range strings.Fields(out) {
			pid, _ := strconv.Atoi(p)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		waitFor(t, 30*time.Second, "restart of exec", func() (bool, string) {
			p, err := l.get("exec")
			if err != nil {
				return false, err.Error()
			}
			cs := p.Status.ContainerStatuses
			return len(cs) == 1 && cs[0].RestartCount >= 1 && cs[0].Ready && cs[0].LastTerminationState.Terminated != nil,
				fmt.Sprintf("%+v", cs)
		})
	})
	t.Run("graceful deletion serves until the deadline", func(t *testing.T) {
		p, err := l.get("web")
		if err != nil {
			t.Fatal(err)
		}
		deadline := metav1.NewTime(time.Now().Add(3 * time.Second))
		grace := int64(3)
		p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &deadline, &grace
		if _, err := l.client.CoreV1().Pods("default").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Still serving and ready while terminating.
		l.expectAnswers(l.nodeNS, "tcp", "web", webIP, gw)
		if p, err := l.get("web"); err != nil || !podReady(p.Status) {
			t.Fatalf("terminating pod not ready: %v", err)
		}
		waitFor(t, 20*time.Second, "deletion of the web object", func() (bool, string) {
			_, err := l.get("web")
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		})
		if time.Now().Before(deadline.Time) {
			t.Fatalf("pod deleted before its deadline %s", deadline.Time)
		}
		l.checkGone(web)
		if _, err := l.echoClient(l.nodeNS, "--proto", "tcp", "--addr", webIP+":8080", "--timeout", "500ms"); err == nil {
			t.Fatal("deleted pod still answers")
		}
	})
	t.Run("pod deleted at once is torn down at once", func(t *testing.T) {
		if err := l.client.CoreV1().Pods("default").Delete(context.Background(), "tcp", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		l.checkGone(tcp)
	})

	// A kubelet that exits leaves its pods running; the next run removes
	// the ones whose pods are gone, sets up again (same IP) the ones that
	// still exist, and sets up new ones.
	exeIP, exeIP6 := l.mustIP("exec"), l.mustIP6("exec")
	stop()
	if ns := netnsList(t); !strings.Contains(ns, PodNetnsName(exe.UID)) || !strings.Contains(ns, PodNetnsName(noProbe.UID)) {
		t.Fatal("kubelet exit tore pods down without --teardown-on-exit")
	}
	l.expectAnswers(l.nodeNS, "tcp", "noprobe", l.mustIP("noprobe"), gw)
	if err := l.client.CoreV1().Pods("default").Delete(context.Background(), "noprobe", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	stop2 := l.start(true)
	l.checkGone(noProbe)
	late := l.createPod("late", httpProbe())
	l.waitReady("late", true)
	l.expectAnswers(l.nodeNS, "udp", "late", l.mustIP("late"), gw)
	waitFor(t, 30*time.Second, "exec set up again after the restart", func() (bool, string) {
		p, err := l.get("exec")
		if err != nil {
			return false, err.Error()
		}
		cs := p.Status.ContainerStatuses
		return podReady(p.Status) && len(cs) == 1 && cs[0].RestartCount >= 2, fmt.Sprintf("%+v", p.Status)
	})
	if ip := l.mustIP("exec"); ip != exeIP {
		t.Errorf("exec changed IP across a kubelet restart: %s -> %s", exeIP, ip)
	}
	if ip := l.mustIP6("exec"); ip != exeIP6 {
		t.Errorf("exec changed IPv6 across a kubelet restart: %s -> %s", exeIP6, ip)
	}
	l.expectAnswers(l.nodeNS, "tcp", "exec", exeIP6, nodeIP6)
	l.expectAnswers(l.nodeNS, "tcp", "exec", exeIP, gw)
	stop2()
	l.checkGone(late)
	l.checkGone(exe)

	// Nothing of ours is left: no pod namespaces, no veths in the node.
	ns := netnsList(t)
	links := mustRun(t, "ip", "-n", l.nodeNS, "-o", "link", "show")
	for _, uid := range l.uids {
		if strings.Contains(ns, PodNetnsName(typesUID(uid))) || strings.Contains(links, VethName(typesUID(uid))) {
			t.Errorf("leftover of pod %s: netns %q links %q", uid, ns, links)
		}
	}
	if recs, _ := filepath.Glob(filepath.Join(l.stateDir, l.node, "*")); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
}

// mustIP6 is the pod's IPv6 address.
func (l *lab) mustIP6(name string) string {
	l.t.Helper()
	p, err := l.get(name)
	if err != nil || len(p.Status.PodIPs) != 2 {
		l.t.Fatalf("pod %s has no IPv6 address: %v", name, err)
	}
	return p.Status.PodIPs[1].IP
}

func (l *lab) mustIP(name string) string {
	l.t.Helper()
	p, err := l.get(name)
	if err != nil || p.Status.PodIP == "" {
		l.t.Fatalf("pod %s has no IP: %v", name, err)
	}
	return p.Status.PodIP
}
