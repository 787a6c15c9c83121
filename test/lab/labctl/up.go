package labctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Progress prints a timestamped line per step and how long each took.
type Progress struct {
	W     io.Writer
	start time.Time
	step  string
	t0    time.Time
}

// Step starts a step (ending the previous one).
func (p *Progress) Step(format string, args ...any) {
	p.End()
	if p.start.IsZero() {
		p.start = time.Now()
	}
	p.step, p.t0 = fmt.Sprintf(format, args...), time.Now()
	fmt.Fprintf(p.W, "[%s] %s ...\n", time.Now().Format("15:04:05"), p.step)
}

// End ends the current step, printing its duration.
func (p *Progress) End() {
	if p.step != "" {
		fmt.Fprintf(p.W, "[%s]   %s: done in %.1fs\n", time.Now().Format("15:04:05"), p.step, time.Since(p.t0).Seconds())
		p.step = ""
	}
}

// running reports whether every part of the lab is up.
func (c Config) running(ctx context.Context) bool {
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "scheduler", "qemu"} {
		if _, ok := c.hostProcPid(name); !ok {
			return false
		}
	}
	return c.Agent().Healthy(ctx)
}

// Up brings the lab up; when it is already up it only prints how to use it.
func Up(ctx context.Context, c Config, w io.Writer) error {
	if cur, err := Load(); err == nil && cur.running(ctx) {
		fmt.Fprintf(w, "the lab is already up (proxy: %s)\n", cur.Proxy)
		cur.printUsage(w)
		return nil
	} else if err == nil {
		fmt.Fprintln(w, "a previous lab is partly up: taking it down first")
		if err := Down(ctx, cur, w); err != nil {
			return err
		}
	}
	for _, f := range []string{c.toolBin("kube-apiserver"), c.toolBin("kube-controller-manager"), c.toolBin("kubectl"),
		c.proxyBinary(), c.ourBin("labkubelet"), c.ourBin("labecho"), c.ourBin("labagent"), c.ourBin("lab")} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("missing %s: build the lab first (make lab-bins)", f)
		}
	}
	if err := os.MkdirAll(c.StateDir, 0o755); err != nil {
		return err
	}
	if err := c.save(); err != nil {
		return err
	}
	p := &Progress{W: w}
	defer p.End()
	total := time.Now()
	fail := func(step string, err error) error {
		return fmt.Errorf("lab up: %s: %w\n(the lab stays as it is for inspection; `lab down` removes it)", step, err)
	}

	p.Step("starting etcd and kube-apiserver on 127.0.0.1:%d", c.APIPort)
	if err := c.writeCredentials(); err != nil {
		return fail("credentials", err)
	}
	if err := c.startEtcd(); err != nil {
		return fail("etcd", err)
	}
	if err := c.startAPIServer(); err != nil {
		return fail("kube-apiserver", err)
	}
	if err := c.waitAPIServer(ctx); err != nil {
		return fail("kube-apiserver", err)
	}

	p.Step("starting kube-controller-manager and the scheduler; registering %d nodes", c.Nodes)
	if err := c.startControllerManager(); err != nil {
		return fail("kube-controller-manager", err)
	}
	cs, err := c.Client()
	if err != nil {
		return fail("client", err)
	}
	if err := c.registerNodes(ctx, cs); err != nil {
		return fail("nodes", err)
	}
	if err := c.startScheduler(); err != nil {
		return fail("scheduler", err)
	}

	p.Step("booting the VM (Debian kernel under qemu TCG)")
	if err := c.startVM(); err != nil {
		return fail("VM", err)
	}
	if err := c.waitAgent(ctx); err != nil {
		return fail("VM", err)
	}

	p.Step("building the node network and starting kubelets and proxies (%s)", c.Proxy)
	if err := c.copyBinaries(ctx); err != nil {
		return fail("copying binaries into the VM", err)
	}
	if err := c.setupNetwork(ctx); err != nil {
		return fail("node network", err)
	}
	if err := c.startNodes(ctx); err != nil {
		return fail("nodes", err)
	}

	p.Step("waiting for the proxies to be healthy and the default service account")
	if err := c.waitProxies(ctx); err != nil {
		return fail("proxies", err)
	}
	err = poll(ctx, 2*time.Minute, func() (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, nil
	}, func() string {
		return "no default service account; kube-controller-manager log:\n" + tailFile(c.LogFile("kube-controller-manager"), 30)
	})
	if err != nil {
		return fail("service account", err)
	}
	p.End()
	fmt.Fprintf(w, "the lab is up in %.0fs\n", time.Since(total).Seconds())
	c.printUsage(w)
	return nil
}

func (c Config) printUsage(w io.Writer) {
	fmt.Fprintf(w, `
Nodes: %s (node network %s, pod CIDRs 10.244.N.0/24), proxy: %s
  lab kubectl get pods -o wide              the API (kubeconfig %s)
  lab exec node1 -- ipvsadm -Ln             a command in a node's network namespace
  lab exec vm -- ip netns                   a command in the VM itself
  lab exec pod/NS/NAME -- labecho client --proto tcp --addr 10.96.0.10:80
  lab proxy node1 restart|stop|start|logs   the proxy under test
  lab down                                  remove everything
`, strings.Join(c.NodeNames(), ", "), NodeNet, c.Proxy, c.Kubeconfig())
}

// Down stops every part of the lab and removes its state.
func Down(ctx context.Context, c Config, w io.Writer) error {
	var errs []error
	// The VM first: everything inside it dies with it.
	for _, name := range []string{"qemu", "scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
		if err := c.stopHostProc(name, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range c.hostProcs() {
		if err := c.stopHostProc(name, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	// Anything else still naming the state dir (an API pipe qemu started).
	killStragglers(c.StateDir, fmt.Sprintf("pipe 127.0.0.1:%d", c.APIPort))
	if len(errs) == 0 {
		if err := os.RemoveAll(c.StateDir); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		fmt.Fprintln(w, "the lab is down")
	}
	return errors.Join(errs...)
}

// killStragglers kills processes whose command line contains any marker.
func killStragglers(markers ...string) {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		s := strings.ReplaceAll(string(cmdline), "\x00", " ")
		for _, m := range markers {
			if strings.Contains(s, m) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	}
}

// HostPIDs returns the pids of the lab's host processes (for CheckDown).
func (c Config) HostPIDs() []int {
	var pids []int
	for _, name := range c.hostProcs() {
		if pid, ok := c.hostProcPid(name); ok {
			pids = append(pids, pid)
		}
	}
	return pids
}

// CheckDown verifies that `lab down` left nothing behind: none of the given
// processes alive, no process naming the state dir, no state dir, and
// none of the lab's ports answering.
func CheckDown(c Config, pids []int) error {
	var left []string
	for _, pid := range pids {
		if alive(pid) {
			left = append(left, fmt.Sprintf("process %d still runs", pid))
		}
	}
	if _, err := os.Stat(c.StateDir); err == nil {
		left = append(left, "state dir "+c.StateDir+" still exists")
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(cmdline) == 0 {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || !alive(pid) {
			continue
		}
		if s := strings.ReplaceAll(string(cmdline), "\x00", " "); strings.Contains(s, c.StateDir) {
			left = append(left, fmt.Sprintf("process %d: %s", pid, s))
		}
	}
	for _, port := range []int{c.APIPort, c.EtcdPort, c.AgentPort} {
		if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			conn.Close()
			left = append(left, fmt.Sprintf("port %d still answers", port))
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("lab down left: %s", strings.Join(left, "; "))
	}
	return nil
}
