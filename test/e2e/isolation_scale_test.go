//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// isoKubeletProber probes a URL as the kubelet runs a livenessProbe:
// after initialDelaySeconds, every periodSeconds, each bounded by
// timeoutSeconds, a status of 200-399 a success; failureThreshold
// consecutive failures would restart the container.
type isoKubeletProber struct {
	stop, done chan struct{}

	mu             sync.Mutex
	probes, failed int
	consecutive    int
	maxConsecutive int
	peak           time.Duration
	log            []string
}

func isoStartKubeletProber(node string, p *v1.Probe, started time.Time) *isoKubeletProber {
	k := &isoKubeletProber{stop: make(chan struct{}), done: make(chan struct{})}
	url := fmt.Sprintf("http://127.0.0.1:%d%s", p.HTTPGet.Port.IntValue(), p.HTTPGet.Path)
	timeout := time.Duration(p.TimeoutSeconds) * time.Second
	period := time.Duration(p.PeriodSeconds) * time.Second
	go func() {
		defer close(k.done)
		next := started.Add(time.Duration(p.InitialDelaySeconds) * time.Second)
		for {
			select {
			case <-k.stop:
				return
			case <-time.After(time.Until(next)):
			}
			next = next.Add(period)
			code, took, err := isoHTTP(node, url, timeout)
			ok := code >= 200 && code < 400
			k.mu.Lock()
			k.probes++
			k.peak = max(k.peak, took)
			if ok {
				k.consecutive = 0
			} else {
				k.failed++
				k.consecutive++
				k.maxConsecutive = max(k.maxConsecutive, k.consecutive)
				k.log = append(k.log, fmt.Sprintf("+%.0fs: %d in %.2fs (%v)", time.Since(started).Seconds(), code, took.Seconds(), err))
			}
			k.mu.Unlock()
		}
	}()
	return k
}

func (k *isoKubeletProber) finish() (probes, failed, maxConsecutive int, peak time.Duration, log []string) {
	close(k.stop)
	<-k.done
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.probes, k.failed, k.maxConsecutive, k.peak, k.log
}

// 3000 Services (10000 by hand: E2E_COLD_SERVICES=10000; at a fifth of a
// CPU in the lab VM that is some 25 minutes of creating Services and cold
// syncing, past the suite's budget), then a cold start of node1's proxy
// (its kernel state
// removed by --cleanup) in a cgroup limited to a fifth of a CPU, while
// /livez is probed exactly as the DaemonSet's livenessProbe says: the
// kubelet would never have restarted it (fewer consecutive failures than
// failureThreshold), and the first sync completes (every virtual server
// in the kernel). E2E_COLD_SERVICES and E2E_COLD_CPU (in CPUs) change the
// scale and the limit.
func TestColdStartUnderProbes(t *testing.T) {
	const (
		node   = "node1"
		eps    = 1
		cgRoot = "/run/lab-cgroup" // as TestThrottledProxyConverges
		cg     = cgRoot + "/kipx-coldstart"
		ns     = "e2e-coldstart"
	)
	services := 3000 // a first sync of minutes at this CPU: past the 60 s health timeout
	if v, err := strconv.Atoi(os.Getenv("E2E_COLD_SERVICES")); err == nil && v > 0 {
		services = v
	}
	cpu := 0.2
	if v, err := strconv.ParseFloat(os.Getenv("E2E_COLD_CPU"), 64); err == nil && v > 0 {
		cpu = v
	}
	ctx := context.Background()
	reportOnFailure(t)
	probe := isoLivenessProbe(t)
	t.Logf("the DaemonSet's livenessProbe: %s:%s, initialDelaySeconds %d, periodSeconds %d, timeoutSeconds %d, failureThreshold %d",
		probe.HTTPGet.Path, probe.HTTPGet.Port.String(), probe.InitialDelaySeconds, probe.PeriodSeconds, probe.TimeoutSeconds, probe.FailureThreshold)
	isoRequireDefaultProxies(t)
	bulk := isoBulkClient(t)
	if err := labctl.EnsureNamespace(ctx, cs, ns); err != nil {
		t.Fatalf("step: creating namespace %s: %v", ns, err)
	}
	// Registered first, so it runs last: after the proxy is restored, the
	// Services go and both nodes' kernels shrink back (bounded).
	t.Cleanup(func() {
		start := time.Now()
		if err := isoDeleteServices(bulk, ns); err != nil {
			t.Errorf("cleanup: deleting the Services: %v", err)
			return
		}
		for _, n := range lab.NodeNames() {
			deadline := time.Now().Add(5 * time.Minute)
			for c := isoCountColdRS(n); c != 0; c = isoCountColdRS(n) {
				if time.Now().After(deadline) {
					t.Errorf("cleanup: %s still has %d of the case's real servers", n, c)
					break
				}
				time.Sleep(5 * time.Second)
			}
		}
		t.Logf("cleanup: the %d Services and their virtual servers gone in %.0fs", services, time.Since(start).Seconds())
	})
	start := time.Now()
	isoCreateServices(t, bulk, ns, services, eps)
	created := time.Since(start)
	t.Logf("%d Services with %d endpoint each created in %.0fs", services, eps, created.Seconds())
	for _, n := range lab.NodeNames() {
		_, took := isoWaitCount(t, "the running proxies program the Services", n, 6*time.Minute, func(c int) bool { return c == services*eps })
		t.Logf("%s: the running proxy has every virtual server (%.0fs more)", n, took.Seconds())
	}

	// The cgroup: a CPU limit only.
	setup := fmt.Sprintf(`set -e
mkdir -p %[2]s
mountpoint -q %[2]s || mount -t cgroup2 none %[2]s
echo +cpu > %[2]s/cgroup.subtree_control
mkdir -p %[1]s
echo "%[3]d 100000" > %[1]s/cpu.max
`, cg, cgRoot, int(cpu*100000))
	nodeOutput(t, "vm", "sh", "-c", setup)
	argv := lab.ProxyArgv(node)
	wrapped := append([]string{"sh", "-c", "echo $$ > " + cg + "/cgroup.procs && exec \"$@\"", "sh"}, argv...)
	t.Cleanup(func() {
		ctx := context.Background()
		if err := lab.RestartProxyWithArgs(ctx, node, nil); err != nil {
			t.Errorf("cleanup: restoring the proxy on %s: %v", node, err)
		} else if err := lab.WaitProxyHealthy(ctx, node, 5*time.Minute); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		_, _ = lab.Output(ctx, "vm", "rmdir", cg)
	})
	if err := lab.StopProxy(ctx, node); err != nil {
		t.Fatalf("step: stopping the proxy: %v", err)
	}
	// Registered after the restore, so it runs before it: on failure, what
	// the throttled proxy itself said (its warnings and its last lines).
	logFrom := isoLogSize(node)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the throttled proxy's log on %s:\n%s", node, isoLogSince(t, node, logFrom, 120))
		}
	})
	if out, err := lab.Output(ctx, node, argv[0], "--cleanup"); err != nil && lab.Proxy != "upstream" {
		t.Fatalf("step: --cleanup before the cold start: %v\n%s", err, out)
	}
	if c := isoCountColdRS(node); c != 0 && lab.Proxy != "upstream" {
		t.Fatalf("step: %d of the real servers left after --cleanup", c)
	}
	began := time.Now()
	if err := lab.StartProxyArgv(ctx, node, wrapped); err != nil {
		t.Fatalf("step: starting the throttled proxy: %v", err)
	}
	prober := isoStartKubeletProber(node, probe, began)
	// 12 minutes per 3000 Services: the suite's case takes about four;
	// the kernel's cost of each address grows with the addresses already
	// on kube-ipvs0, so 10,000 take more than three times as long.
	coldWait := max(12*time.Minute, time.Duration(services)*12*time.Minute/3000)
	_, cold := isoWaitCount(t, "the throttled proxy's first sync", node, coldWait, func(c int) bool { return c == services*eps })
	probes, failed, maxConsecutive, peak, fails := prober.finish()
	cpuStat := nodeOutput(t, "vm", "cat", cg+"/cpu.stat")
	t.Logf("cold sync of %d Services at %.2f CPU: %.0fs; livenessProbe: %d probes, %d failed, at most %d in a row (threshold %d), peak latency %.2fs\ncpu.stat:\n%s",
		services, cpu, cold.Seconds(), probes, failed, maxConsecutive, probe.FailureThreshold, peak.Seconds(), cpuStat)
	for _, f := range fails {
		t.Logf("failed probe: %s", f)
	}
	if int32(maxConsecutive) >= probe.FailureThreshold {
		t.Errorf("step: %d consecutive livenessProbe failures during the cold sync: the kubelet would have restarted the proxy (failureThreshold %d)", maxConsecutive, probe.FailureThreshold)
	}
	if running, _, err := lab.ProxyRunning(ctx, node); err != nil || !running {
		t.Errorf("step: the throttled proxy is not running after its first sync (err %v)", err)
	}
	addFaultRow(faultRow{fmt.Sprintf("cold start of %d Services at %.2f CPU, probed as the livenessProbe", services, cpu), "-",
		fmt.Sprintf("%d/%d probes failed, at most %d in a row (restart at %d)", failed, probes, maxConsecutive, probe.FailureThreshold),
		fmt.Sprintf("first sync complete after %.0fs; peak probe latency %.2fs", cold.Seconds(), peak.Seconds())})
}
