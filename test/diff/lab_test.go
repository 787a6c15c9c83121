//go:build diff

package diff

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// TestDiffUpstream runs ROUNDS rounds (default 3) from SEED (default: the
// clock): each round applies a generated state, runs upstream kube-proxy
// (IPVS mode) and then ours with the same flags on node1 and node2, each
// from a fresh node namespace, and compares their stable kernel states.
// Round i uses seed SEED+i, so `SEED=that ROUNDS=1` reproduces it alone.
func TestDiffUpstream(t *testing.T) {
	seed := uint64(time.Now().UnixNano() % 1_000_000)
	if s := os.Getenv("SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SEED=%q: %v", s, err)
		}
		seed = v
	}
	rounds := 3
	if s := os.Getenv("ROUNDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("ROUNDS=%q: want a positive number", s)
		}
		rounds = v
	}
	ctx := context.Background()
	cfg, err := labctl.DefaultConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Proxy = "ours"
	al, err := LoadAllowlist(filepath.Join(cfg.Repo, "docs", "fidelity-allowlist.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := cfg.Lock(ctx, os.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if cur, err := labctl.Load(); err == nil {
		t.Log("taking down the lab that was up, to start from a fresh one")
		if err := labctl.Down(ctx, cur, os.Stdout); err != nil {
			t.Fatal(err)
		}
	}
	if err := labctl.Up(ctx, cfg, os.Stdout); err != nil {
		labctl.Down(ctx, cfg, os.Stdout)
		t.Fatal(err)
	}
	defer func() {
		if os.Getenv("LAB_KEEP") == "1" {
			t.Log("LAB_KEEP=1: the lab stays up (`lab down` removes it)")
			return
		}
		if err := labctl.Down(ctx, cfg, os.Stdout); err != nil {
			t.Errorf("lab down: %v", err)
		}
	}()
	cs, err := cfg.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.CopyToVM(ctx, cfg.ProxyBinaryOf("upstream")); err != nil {
		t.Fatal(err)
	}
	r := &runner{cfg: cfg, cs: cs, al: al, out: filepath.Join(cfg.Repo, "_output", "diff")}
	total, unexplained := 0, 0
	for i := range rounds {
		s := seed + uint64(i)
		start := time.Now()
		diffs, err := r.round(ctx, t, s)
		if err != nil {
			t.Errorf("seed %d: %v (reproduce: SEED=%d ROUNDS=1 make diff-upstream)", s, err, s)
			continue
		}
		total += len(diffs)
		unexplained += Unexplained(diffs)
		t.Logf("seed %d: %d differences, %d unexplained; the round took %.0fs", s, len(diffs), Unexplained(diffs), time.Since(start).Seconds())
	}
	if unexplained > 0 {
		t.Errorf("%d of %d differences are unexplained (see above; dumps in _output/diff)", unexplained, total)
	}
}

type runner struct {
	cfg labctl.Config
	cs  kubernetes.Interface
	al  *Allowlist
	out string
}

// round runs one seed and returns its differences (classified).
func (r *runner) round(ctx context.Context, t *testing.T, seed uint64) ([]Difference, error) {
	rnd := NewRand(seed)
	ns := fmt.Sprintf("diff-%d", seed)
	st := Generate(rnd, ns, 5, 20)
	opts := GenerateOptions(rnd)
	t.Logf("seed %d: %d Services, %d EndpointSlices, nodes %v, options %s", seed, len(st.Services), len(st.Slices), st.NodeZones, opts)
	nodes := r.cfg.NodeNames()
	for _, n := range nodes {
		if err := r.cfg.StopNode(ctx, n); err != nil {
			return nil, err
		}
	}
	if err := r.apply(ctx, t, st); err != nil {
		return nil, fmt.Errorf("applying the state: %w", err)
	}
	defer func() {
		if err := r.cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Logf("deleting namespace %s: %v", ns, err)
		}
	}()
	// The round's objects and default/kubernetes: earlier rounds'
	// namespaces may still be going away.
	var svcs []*v1.Service
	var eps []*discoveryv1.EndpointSlice
	for _, n := range []string{ns, "default"} {
		sl, err := r.cs.CoreV1().Services(n).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		el, err := r.cs.DiscoveryV1().EndpointSlices(n).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, err
		}
		svcs, eps = append(svcs, ptrs(sl.Items)...), append(eps, ptrs(el.Items)...)
	}
	dir := filepath.Join(r.out, strconv.FormatUint(seed, 10))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Each proxy runs on every node at once (each node is its own
	// namespace), upstream first, then ours with the same flags.
	dumps := map[string]map[string]Dump{} // proxy -> node -> dump
	for _, proxy := range []string{"upstream", "ours"} {
		dumps[proxy] = map[string]Dump{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		var errs []error
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ann := NewAnnotator(n, svcs, eps)
				d, raw, log, err := r.runProxy(ctx, proxy, n, opts, ann)
				base := filepath.Join(dir, n+"-"+proxy)
				werr := errors.Join(os.WriteFile(base+".raw", []byte(raw), 0o644),
					os.WriteFile(base+".txt", []byte(d.String()), 0o644), os.WriteFile(base+".log", []byte(log), 0o644))
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, fmt.Errorf("%s on %s: %w", proxy, n, err))
				}
				if werr != nil {
					errs = append(errs, werr)
				}
				dumps[proxy][n] = d
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
	}
	var all []Difference
	for _, n := range nodes {
		diffs := Compare(n, dumps["upstream"][n], dumps["ours"][n])
		r.al.Classify(diffs)
		all = append(all, diffs...)
	}
	if len(all) > 0 {
		t.Logf("seed %d differences:\n%s", seed, Report(all, fmt.Sprintf("SEED=%d ROUNDS=1 make diff-upstream; options %s", seed, opts)))
	}
	return all, nil
}

func ptrs[T any](s []T) []*T {
	out := make([]*T, len(s))
	for i := range s {
		out[i] = &s[i]
	}
	return out
}

// apply creates the round's namespace, Services (with their load-balancer
// status) and EndpointSlices, and patches the nodes' zone labels.
func (r *runner) apply(ctx context.Context, t *testing.T, st State) error {
	for node, zone := range st.NodeZones {
		patch := fmt.Sprintf(`{"metadata":{"labels":{"topology.kubernetes.io/zone":%q}}}`, zone)
		if _, err := r.cs.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("labelling %s: %w", node, err)
		}
	}
	if err := labctl.EnsureNamespace(ctx, r.cs, st.Namespace); err != nil {
		return err
	}
	// A Service the API server refuses is left out of the round, with its
	// slices, and reported: the generator's rules are a guess at the
	// server's, the server is the judge.
	refused := map[string]bool{}
	for _, svc := range st.Services {
		status := svc.Status
		created, err := r.cs.CoreV1().Services(st.Namespace).Create(ctx, svc, metav1.CreateOptions{})
		if apierrors.IsInvalid(err) {
			t.Errorf("the API server refused generated Service %s (a generator bug; left out of the round): %v", svc.Name, err)
			refused[svc.Name] = true
			continue
		}
		if err != nil {
			return fmt.Errorf("Service %s: %w", svc.Name, err)
		}
		if len(status.LoadBalancer.Ingress) > 0 {
			created.Status = status
			if _, err := r.cs.CoreV1().Services(st.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("Service %s status: %w", svc.Name, err)
			}
		}
	}
	for _, es := range st.Slices {
		if refused[es.Labels[discoveryv1.LabelServiceName]] {
			continue
		}
		if _, err := r.cs.DiscoveryV1().EndpointSlices(st.Namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			if apierrors.IsInvalid(err) {
				t.Errorf("the API server refused generated EndpointSlice %s (a generator bug; left out of the round): %v", es.Name, err)
				continue
			}
			return fmt.Errorf("EndpointSlice %s: %w", es.Name, err)
		}
	}
	return nil
}

// runProxy runs proxy on node from a fresh namespace with the round's
// options, waits until its state is stable, dumps it and stops it. It
// returns the normalized dump, the raw one and the end of the proxy's log.
func (r *runner) runProxy(ctx context.Context, proxy, node string, opts Options, ann *Annotator) (Dump, string, string, error) {
	if err := r.cfg.ResetNodeNetns(ctx, node); err != nil {
		return nil, "", "", err
	}
	// The fresh namespace must hold nothing of either proxy.
	raw, err := r.cfg.Output(ctx, node, "sh", "-c", DumpScript())
	if err != nil {
		return nil, raw, "", err
	}
	if d := Normalize(raw, nil); len(d["ipvs"])+len(d["ipset"])+len(d["iptables"])+len(d["ip6tables"])+len(d["addr"]) > 0 {
		return nil, raw, "", fmt.Errorf("the fresh namespace is not clean:\n%s", raw)
	}
	argv := r.cfg.ProxyArgvOf(proxy, node, opts.Flags()...)
	if err := r.cfg.StartProxyArgv(ctx, node, argv); err != nil {
		return nil, "", "", err
	}
	logTail := func() string {
		out, err := r.cfg.Output(ctx, "vm", "tail", "-n", "300", labctl.ProxyLogPath(node))
		if err != nil {
			return fmt.Sprintf("(reading %s: %v)", labctl.ProxyLogPath(node), err)
		}
		return out
	}
	defer r.cfg.StopProxy(ctx, node)
	if err := r.cfg.WaitProxyHealthy(ctx, node, 2*time.Minute); err != nil {
		return nil, "", logTail(), err
	}
	// Stable: two equal dumps 5 s apart, with the default/kubernetes
	// Service programmed (so that the first sync is done).
	var prev Dump
	deadline := time.Now().Add(3 * time.Minute)
	for {
		raw, err = r.cfg.Output(ctx, node, "sh", "-c", DumpScript())
		if err != nil {
			return nil, raw, logTail(), err
		}
		d := Normalize(raw, ann)
		if prev != nil && reflect.DeepEqual(prev, d) && strings.Contains(strings.Join(d["ipvs"], "\n"), "10.96.0.1:443") {
			return d, raw, logTail(), nil
		}
		if time.Now().After(deadline) {
			return nil, raw, logTail(), fmt.Errorf("the state did not settle in 3 minutes")
		}
		prev = d
		time.Sleep(5 * time.Second)
	}
}
