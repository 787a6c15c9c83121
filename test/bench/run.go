package bench

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// Run brings up a lab of its own with one node (under the lab lock, taking
// down a lab that was up), runs the benchmark and takes the lab down again
// (unless o.Keep). Results go to o.OutDir after every size, so that an
// interrupted run keeps what it measured.
func Run(ctx context.Context, o Options, lab labctl.Config, w io.Writer) (err error) {
	start := time.Now()
	lab.Nodes, lab.Proxy, lab.ProxyArgs = 1, "ours", nil
	need := []string{filepath.Join(lab.Repo, "_output", "bin", "labbench"), lab.ProxyBinaryOf("ours")}
	for _, p := range o.Proxies {
		need = append(need, lab.ProxyBinaryOf(p))
	}
	for _, f := range need {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("missing %s (make lab-bins lab-tools, and go build -o _output/bin/ ./test/lab/cmd/labbench)", f)
		}
	}
	unlock, err := lab.Lock(ctx, w)
	if err != nil {
		return err
	}
	defer unlock()
	if cur, err := labctl.Load(); err == nil {
		fmt.Fprintln(w, "bench: taking down the lab that was up in", cur.StateDir)
		if err := labctl.Down(ctx, cur, w); err != nil {
			return err
		}
	}
	if err := labctl.Up(ctx, lab, w); err != nil {
		labctl.Down(context.Background(), lab, w)
		return err
	}
	defer func() {
		if o.Keep {
			fmt.Fprintln(w, "bench: BENCH_KEEP=1: the lab stays up (`lab down` removes it)")
			return
		}
		if derr := labctl.Down(context.Background(), lab, w); derr != nil && err == nil {
			err = derr
		}
	}()
	cs, err := newClient(lab.Kubeconfig())
	if err != nil {
		return err
	}
	b := &bench{
		opts: o, lab: lab, ag: lab.Agent(), res: &Results{}, idx: map[rowKey]int{},
		pop: newPopulation(cs, o.Endpoints, o.NodePortEvery),
		rng: rand.New(rand.NewSource(o.Seed)), w: w,
	}
	if err := b.prepare(ctx); err != nil {
		return err
	}
	meta := b.meta(ctx)
	for _, n := range o.Sizes {
		if err := ctx.Err(); err != nil {
			return err
		}
		b.declareRows(n)
		b.logf("N=%d: creating Services and EndpointSlices", n)
		t := time.Now()
		if err := b.pop.ensure(ctx, n); err != nil {
			return err
		}
		b.logf("N=%d: the API holds %d Services (%d NodePort) in %.0fs", n, n, b.pop.nodePorts(n), time.Since(t).Seconds())
		for _, proxy := range []string{"ours", "upstream"} {
			if !o.runs(proxy, n) {
				if proxy == "upstream" && b.opts.has(ScCold) {
					note := "not run"
					if n > o.UpstreamMax {
						note = "not run (BENCH_UPSTREAM_10K=1)"
					}
					b.markNotRun(proxy, n, note)
				}
				continue
			}
			if !o.has(ScCold) {
				continue
			}
			if err := b.runProxy(ctx, proxy, n); err != nil {
				if ctx.Err() != nil {
					return err
				}
				b.failures = append(b.failures, fmt.Sprintf("%s at N=%d: %v", proxy, n, err))
				b.logf("FAILED: %s at N=%d: %v\nits log:\n%s", proxy, n, err, b.proxyLogTail(ctx, proxy, n))
			}
		}
		if o.has(ScFloor) {
			if err := b.floor(ctx, n); err != nil {
				if ctx.Err() != nil {
					return err
				}
				b.failures = append(b.failures, fmt.Sprintf("kernel floor at N=%d: %v", n, err))
				b.logf("FAILED: kernel floor at N=%d: %v", n, err)
			}
		}
		b.res.Meta = append(append([]string(nil), meta...), fmt.Sprintf("sizes measured so far: up to N=%d; %.0f minutes", n, time.Since(start).Minutes()))
		if err := b.res.Write(o.OutDir); err != nil {
			return err
		}
	}
	b.res.Meta = append(append([]string(nil), meta...), fmt.Sprintf("whole run: %.0f minutes; host load average at the end: %s", time.Since(start).Minutes(), loadavg()))
	for _, f := range b.failures {
		b.res.Meta = append(b.res.Meta, "FAILED: "+f)
	}
	if err := b.res.Write(o.OutDir); err != nil {
		return err
	}
	fmt.Fprintln(w)
	b.res.Markdown(w)
	fmt.Fprintf(w, "\nbench: %s/results.md and results.csv; %.0f minutes in all\n", o.OutDir, time.Since(start).Minutes())
	if len(b.failures) > 0 {
		return errors.New("some measurements failed:\n  " + strings.Join(b.failures, "\n  "))
	}
	return nil
}

// prepare stops what `lab up` started on node1, copies the binaries into
// the VM and gives node1 a fresh namespace.
func (b *bench) prepare(ctx context.Context) error {
	if err := b.lab.StopNode(ctx, node); err != nil {
		return err
	}
	files := []string{filepath.Join(b.lab.Repo, "_output", "bin", "labbench"), b.lab.ProxyBinaryOf("ours")}
	if _, err := os.Stat(b.lab.ProxyBinaryOf("upstream")); err == nil {
		files = append(files, b.lab.ProxyBinaryOf("upstream"))
	}
	if err := b.lab.CopyToVM(ctx, files...); err != nil {
		return err
	}
	return b.resetNode(ctx)
}

// meta describes the run for the results' header.
func (b *bench) meta(ctx context.Context) []string {
	o := b.opts
	vmOut := func(argv ...string) string {
		out, err := b.ag.Output(ctx, agent.ExecRequest{Argv: argv})
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	}
	hostOut := func(dir string, argv ...string) string {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(out))
	}
	commit := hostOut(b.lab.Repo, "git", "rev-parse", "--short", "HEAD")
	if hostOut(b.lab.Repo, "git", "status", "--porcelain", "--untracked-files=no") != "" {
		commit += " (with uncommitted changes)"
	}
	return []string{
		"date: " + time.Now().UTC().Format("2006-01-02 15:04 UTC") + "; host load average at the start: " + loadavg(),
		"ours: kube-ipvs-proxy " + binaryID(b.lab.ProxyBinaryOf("ours")) + ", the tree at " + commit + "; upstream: kube-proxy " + upstreamVersion(b.lab.Repo) + " --proxy-mode=ipvs",
		fmt.Sprintf("lab VM: kernel %s under qemu TCG, %d MiB, 2 vCPUs; host: %s", vmOut("uname", "-r"), b.lab.MemoryMiB, hostOut("", "nproc")+" cores"),
		fmt.Sprintf("Services: N selectorless ClusterIP Services (every %dth a NodePort), port 80/TCP, one EndpointSlice of %d ready endpoints each, plus default/kubernetes",
			o.NodePortEvery, o.Endpoints),
		fmt.Sprintf("both proxies with the lab's flags (`--kubeconfig --hostname-override=node1 --cluster-cidr=%s --v=2`, upstream also `--proxy-mode=ipvs --conntrack-max-per-core=0`), defaults otherwise (sync period 30s, min sync period 1s)", labctl.ClusterCIDRs),
		fmt.Sprintf("single changes: %d of each kind; churn: %d changes/s for %.0fs; idle: %d syncs; timeout %.0fs",
			o.ChangeSamples, o.ChurnRate, o.ChurnDuration.Seconds(), o.IdleSyncs, o.Timeout.Seconds()),
	}
}

// proxyLogTail is the end of a run's proxy log in the VM.
func (b *bench) proxyLogTail(ctx context.Context, proxy string, n int) string {
	out, err := b.ag.Output(ctx, agent.ExecRequest{Argv: []string{"tail", "-n", "30", fmt.Sprintf("/var/log/lab/bench-%s-%d.log", proxy, n)}})
	if err != nil {
		return err.Error()
	}
	return out
}

// loadavg is the host's 1, 5 and 15 minute load averages: other work on
// the host slows the emulated VM down (and inflates the CPU times measured
// in it), so a busy host makes a noisy run.
func loadavg() string {
	buf, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(buf))
	return strings.Join(f[:min(3, len(f))], " ")
}

// upstreamVersion is the k8s.io/kubernetes version test/tools builds
// kube-proxy from (the binary itself, built from the module, does not know
// its version).
func upstreamVersion(repo string) string {
	buf, err := os.ReadFile(filepath.Join(repo, "test", "tools", "go.mod"))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(buf), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" {
			return f[1]
		}
	}
	return "?"
}

// binaryID names a build: the start of its SHA-256 and when it was built
// (the binary copied into the VM, which may be newer than the commit).
func binaryID(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "?"
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "?"
	}
	st, err := f.Stat()
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("sha256 %x, built %s", h.Sum(nil)[:6], st.ModTime().UTC().Format("2006-01-02 15:04 UTC"))
}
