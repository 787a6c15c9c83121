//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// manifestMemoryRequest is the DaemonSet's memory request, in bytes.
func manifestMemoryRequest(t *testing.T) int64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(lab.Repo, "manifests", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)requests:.*?memory:\s*(\d+)Mi`).FindSubmatch(data)
	if m == nil {
		t.Fatal("no memory request in manifests/daemonset.yaml")
	}
	mi, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return mi << 20
}

// The proxy in a cgroup limited to the DaemonSet's memory request and to a
// fifth of a CPU (a throttled container): with 1000 Services of 5
// endpoints it still converges (every virtual server and real server in
// the kernel), is never killed for memory, and serves the Services.
func TestThrottledProxyConverges(t *testing.T) {
	const (
		node     = "node1"
		services = 1000
		// Not under /sys: `ip netns exec` mounts a sysfs of its own.
		cgRoot = "/run/lab-cgroup"
		cg     = cgRoot + "/kipx-throttled"
	)
	ctx := context.Background()
	memLimit := manifestMemoryRequest(t)
	app := newEchoApp(t, "e2e-throttled", 1)

	// 1000 selectorless Services (every 5th a NodePort) with 5 endpoints each.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, services)
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				typ := v1.ServiceTypeClusterIP
				if i%5 == 0 {
					typ = v1.ServiceTypeNodePort
				}
				name := fmt.Sprintf("s%04d", i)
				_, err := cs.CoreV1().Services(app.ns).Create(ctx, &v1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec:       v1.ServiceSpec{Type: typ, Ports: []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
				}, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					continue
				}
				es := &discoveryv1.EndpointSlice{
					ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
					AddressType: discoveryv1.AddressTypeIPv4,
					Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
				}
				for j := range 5 {
					k := i*5 + j
					es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.251.%d.%d", k/250, k%250+1)},
						Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
				}
				if _, err := cs.DiscoveryV1().EndpointSlices(app.ns).Create(ctx, es, metav1.CreateOptions{}); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := range services {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("step: creating the Services: %v", err)
	}
	t.Logf("%d Services with their EndpointSlices created in %.0fs", services, time.Since(start).Seconds())

	// The cgroup: a fifth of a CPU, the manifest's memory request, no swap.
	setup := fmt.Sprintf(`set -e
mkdir -p %[3]s
mountpoint -q %[3]s || mount -t cgroup2 none %[3]s
echo +cpu +memory > %[3]s/cgroup.subtree_control
mkdir -p %[1]s
echo "20000 100000" > %[1]s/cpu.max
echo %[2]d > %[1]s/memory.max
echo 0 > %[1]s/memory.swap.max 2>/dev/null || true
`, cg, memLimit, cgRoot)
	nodeOutput(t, "vm", "sh", "-c", setup)
	argv := lab.ProxyArgv(node)
	wrapped := []string{"sh", "-c", "echo $$ > " + cg + "/cgroup.procs && exec \"$@\"", "sh"}
	restarted := false
	t.Cleanup(func() {
		if restarted {
			if err := lab.RestartProxyWithArgs(context.Background(), node, nil); err != nil {
				t.Errorf("cleanup: restoring the proxy on %s: %v", node, err)
			} else if err := lab.WaitProxyHealthy(context.Background(), node, 5*time.Minute); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		_, _ = lab.Output(context.Background(), "vm", "rmdir", cg)
	})
	if err := lab.StopProxy(ctx, node); err != nil {
		t.Fatalf("step: stopping the proxy: %v", err)
	}
	// Cold: the kernel state of the Services goes, so the throttled proxy
	// programs all of it (ours: --cleanup; upstream's --cleanup flushes
	// every virtual server, which is what it would program anyway).
	if _, err := lab.Output(ctx, node, append(argv[:1:1], "--cleanup")...); err != nil && lab.Proxy != "upstream" {
		t.Fatalf("step: --cleanup before the cold start: %v", err)
	}
	restarted = true
	began := time.Now()
	if err := lab.StartProxyArgv(ctx, node, append(wrapped, argv...)); err != nil {
		t.Fatalf("step: starting the throttled proxy: %v", err)
	}
	want := services + services/5 // ClusterIPs and node1's NodePorts, of these Services
	lcEventually(t, node+": the throttled proxy programs every virtual server and real server", 15*time.Minute, func() (bool, string) {
		out, err := lab.Output(ctx, node, "ipvsadm", "-Sn")
		if err != nil {
			return false, err.Error()
		}
		rs := 0
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "-a -t ") && strings.Contains(l, " -r 10.251.") {
				rs++
			}
		}
		nodePorts := strings.Count(out, "-A -t "+labctl.NodeAddr(1).String()+":")
		return rs >= 5*want && nodePorts >= services/5, fmt.Sprintf("%d real servers of %d, %d NodePort virtual servers of %d (%.0fs)", rs, 5*want, nodePorts, services/5, time.Since(began).Seconds())
	})
	took := time.Since(began)
	events := nodeOutput(t, "vm", "cat", cg+"/memory.events")
	peak := strings.TrimSpace(nodeOutput(t, "vm", "sh", "-c", "cat "+cg+"/memory.peak 2>/dev/null || cat "+cg+"/memory.current"))
	throttled := nodeOutput(t, "vm", "cat", cg+"/cpu.stat")
	t.Logf("converged in %.0fs; memory peak %s of %d; memory.events:\n%s\ncpu.stat:\n%s", took.Seconds(), peak, memLimit, events, throttled)
	if !strings.Contains(events, "oom_kill 0") {
		t.Errorf("step: the proxy was killed for memory (limit %d, the manifest's request):\n%s", memLimit, events)
	}
	requireAnsweredBy(t, "step: node1 -> "+app.name+" through the throttled proxy's state", request(t, node, "tcp", app.clusterIP()+":80", 2), app.podNames())
	addFaultRow(faultRow{fmt.Sprintf("%d Services, proxy limited to 0.2 CPU and %d MiB (the manifest's request)", services, memLimit>>20), "-",
		"oom_kill 0", fmt.Sprintf("converged in %.0fs, memory peak %s bytes", took.Seconds(), peak)})
}
