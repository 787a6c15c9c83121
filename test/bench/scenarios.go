package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"net/netip"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/bench/probe"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

const (
	node       = "node1"
	metricsURL = "http://127.0.0.1:10249/metrics"
)

// Row titles, in table order.
const (
	rowColdAll      = "cold sync: kernel complete"
	rowColdIPVS     = "cold sync: IPVS complete"
	rowColdCPU      = "cold sync: CPU"
	rowColdRSS      = "cold sync: peak RSS"
	rowRestart      = "restart: first sync"
	rowRestartCPU   = "restart: CPU"
	rowRestartLost  = "restart: virtual servers missing"
	rowIdleDur      = "idle resync: duration per sync"
	rowIdleCPU      = "idle resync: CPU per sync"
	rowChurnP50     = "churn: latency p50"
	rowChurnP99     = "churn: latency p99"
	rowChurnCPU     = "churn: CPU"
	rowChurnMissed  = "churn: changes not shown"
	rowFloorBatch   = "kernel floor: ip -batch (addresses)"
	rowFloorIPVS    = "kernel floor: ipvsadm -R"
	rowFloorIPSet   = "kernel floor: ipset restore"
	unitS           = "s"
	unitCPU         = "CPU s"
	unitMB          = "MB"
	unitCount       = "count"
	changeAdded     = "endpoint added"
	changeRemoved   = "endpoint removed"
	changeSvcCreate = "Service created"
	changeSvcDelete = "Service deleted"
)

var changeKinds = []string{changeAdded, changeRemoved, changeSvcCreate, changeSvcDelete}

func changeRow(kind, p string) string { return fmt.Sprintf("change: %s %s", kind, p) }

// bench is one benchmark run.
type bench struct {
	opts Options
	lab  labctl.Config
	ag   *agent.Client
	pop  *population
	res  *Results
	idx  map[rowKey]int
	rng  *rand.Rand
	w    io.Writer
	runs int
	// failures collects what went wrong; the run goes on with the rest.
	failures []string
}

type rowKey struct {
	scenario string
	n        int
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.w, "[%s] bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// row returns the table row for (scenario, n), made on first use.
func (b *bench) row(scenario string, n int, unit string) *Row {
	k := rowKey{scenario, n}
	if i, ok := b.idx[k]; ok {
		return &b.res.Rows[i]
	}
	b.res.add(Row{Scenario: scenario, N: n, Unit: unit, NoRatio: unit == unitCount})
	b.idx[k] = len(b.res.Rows) - 1
	return &b.res.Rows[len(b.res.Rows)-1]
}

func (b *bench) set(proxy, scenario string, n int, unit string, v Value) {
	r := b.row(scenario, n, unit)
	if proxy == "ours" {
		r.Ours = v
	} else {
		r.Upstream = v
	}
}

func (b *bench) setFloor(scenario string, n int, unit string, v Value) {
	b.row(scenario, n, unit).Floor = v
}

// declareRows makes the rows of size n in table order, so that the table
// reads the same whichever scenarios ran.
func (b *bench) declareRows(n int) {
	o := b.opts
	if o.has(ScCold) || o.has(ScFloor) {
		b.row(rowColdAll, n, unitS)
		b.row(rowColdIPVS, n, unitS)
	}
	if o.has(ScCold) {
		b.row(rowColdCPU, n, unitCPU)
		b.row(rowColdRSS, n, unitMB)
	}
	if o.has(ScRestart) {
		b.row(rowRestart, n, unitS)
		b.row(rowRestartCPU, n, unitCPU)
		b.row(rowRestartLost, n, unitCount)
	}
	if o.has(ScIdle) {
		b.row(rowIdleDur, n, unitS)
		b.row(rowIdleCPU, n, unitCPU)
	}
	if o.has(ScChange) {
		for _, k := range changeKinds {
			b.row(changeRow(k, "p50"), n, unitS)
			b.row(changeRow(k, "p99"), n, unitS)
		}
	}
	if o.has(ScChurn) {
		b.row(b.churnTitle(rowChurnP50), n, unitS)
		b.row(b.churnTitle(rowChurnP99), n, unitS)
		b.row(b.churnTitle(rowChurnCPU), n, unitCPU)
		b.row(b.churnTitle(rowChurnMissed), n, unitCount)
	}
	if o.has(ScFloor) {
		b.row(rowFloorBatch, n, unitS)
		b.row(rowFloorIPVS, n, unitS)
		b.row(rowFloorIPSet, n, unitS)
	}
}

func (b *bench) churnTitle(base string) string {
	return fmt.Sprintf("%s (%d/s for %.0fs)", base, b.opts.ChurnRate, b.opts.ChurnDuration.Seconds())
}

// markNotRun fills proxy's empty cells of size n with a note.
func (b *bench) markNotRun(proxy string, n int, note string) {
	for i := range b.res.Rows {
		r := &b.res.Rows[i]
		if r.N != n || slices.Contains([]string{rowFloorBatch, rowFloorIPVS, rowFloorIPSet}, r.Scenario) {
			continue
		}
		cell := &r.Ours
		if proxy != "ours" {
			cell = &r.Upstream
		}
		if !cell.Set && cell.Note == "" {
			*cell = missing(note)
		}
	}
}

// expected is what a complete kernel holds at size n: the benchmark's
// Services plus default/kubernetes (one virtual and one real server).
type expected struct {
	vs, rs int
	sets   map[string]int
}

func (b *bench) expected(n int) expected {
	np := b.pop.nodePorts(n)
	e := b.pop.endpoints
	return expected{
		vs: n + np + 1,
		rs: (n+np)*e + 1,
		sets: map[string]int{
			"KUBE-CLUSTER-IP":    n + 1,
			"KUBE-IPVS-IPS":      n + 1,
			"KUBE-NODE-PORT-TCP": np,
		},
	}
}

// quiet waits (up to 3 minutes) until the VM's CPU is mostly idle, so that
// a measurement does not start in the wake of the previous one (a deleted
// namespace is torn down in the background).
func (b *bench) quiet(ctx context.Context) {
	var r probe.QuietResult
	if err := call(ctx, b.ag, "", "quiet", probe.QuietSpec{MaxBusy: 0.15, WindowS: 2, TimeoutS: 180}, &r, 4*time.Minute); err != nil {
		b.logf("waiting for a quiet VM: %v", err)
		return
	}
	if !r.Quiet {
		b.logf("the VM is still %.0f%% busy after %.0fs; going on", r.Busy*100, r.Waited)
	}
}

// resetNode gives node1 a fresh, empty network namespace.
func (b *bench) resetNode(ctx context.Context) error {
	if err := b.lab.ResetNodeNetns(ctx, node); err != nil {
		return err
	}
	b.quiet(ctx)
	return nil
}

// startProxy starts proxy on node1 and returns the daemon's name and pid.
func (b *bench) startProxy(ctx context.Context, proxy, name string) (int, error) {
	spec := agent.DaemonSpec{Name: name, Netns: node, Argv: b.lab.ProxyArgvOf(proxy, node)}
	if proxy == "ours" {
		spec.Env = b.opts.OursEnv
	}
	st, err := b.ag.StartDaemon(ctx, spec)
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", proxy, err)
	}
	return st.Pid, nil
}

func (b *bench) stopProxy(ctx context.Context, name string) error {
	_, err := b.ag.StopDaemon(ctx, agent.SignalRequest{Name: name, TimeoutSeconds: 30})
	return err
}

// runProxy measures one proxy at size n, from a fresh namespace, and
// leaves a fresh namespace behind.
func (b *bench) runProxy(ctx context.Context, proxy string, n int) (err error) {
	b.runs++
	name := fmt.Sprintf("bench-%s-%d", proxy, n)
	exp := b.expected(n)
	limit := b.opts.Timeout.Seconds()
	b.quiet(ctx)
	b.logf("%s, N=%d: cold sync (want %d virtual servers, %d real servers; log /var/log/lab/%s.log in the VM)", proxy, n, exp.vs, exp.rs, name)
	pid, err := b.startProxy(ctx, proxy, name)
	if err != nil {
		return err
	}
	defer func() {
		if serr := b.stopProxy(ctx, name); serr != nil && err == nil {
			err = serr
		}
		if rerr := b.resetNode(ctx); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			b.markNotRun(proxy, n, "failed")
		}
	}()

	var cold probe.WaitResult
	err = call(ctx, b.ag, node, "wait", probe.WaitSpec{
		Pid: pid, VS: exp.vs, RS: exp.rs, Sets: exp.sets,
		Rule:     &probe.ChainRule{Table: "nat", Chain: "KUBE-SERVICES", Contains: "KUBE-CLUSTER-IP"},
		TimeoutS: limit,
	}, &cold, b.opts.Timeout)
	if err != nil {
		return fmt.Errorf("%s cold sync: %w", proxy, err)
	}
	b.set(proxy, rowColdAll, n, unitS, valOrTimeout(cold.Done, cold.DoneAt, limit))
	b.set(proxy, rowColdIPVS, n, unitS, valOrTimeout(cold.IPVSAt > 0, cold.IPVSAt, limit))
	if cold.Done {
		b.set(proxy, rowColdCPU, n, unitCPU, val(cold.Stat.CPU))
		b.set(proxy, rowColdRSS, n, unitMB, val(float64(cold.Stat.HWMKiB)/1024))
		b.logf("%s, N=%d: kernel complete at %.1fs (not yet at %.1fs; IPVS at %.1fs, not yet at %.1fs; ipsets at %.1fs), CPU %.1fs (children %.1fs), peak RSS %.0f MB",
			proxy, n, cold.DoneAt, cold.DoneAfter, cold.IPVSAt, cold.IPVSAfter, cold.SetsAt, cold.Stat.CPU, cold.Stat.CPU-cold.Stat.OwnCPU, float64(cold.Stat.HWMKiB)/1024)
	} else {
		b.logf("%s, N=%d: cold sync timed out after %.0fs (%d/%d virtual servers, %d/%d real servers, sets %v)",
			proxy, n, limit, cold.Last.VS, exp.vs, cold.Last.RS, exp.rs, cold.SetCounts)
		b.markNotRun(proxy, n, "not run (cold sync timed out)")
		return nil
	}

	if b.opts.has(ScRestart) {
		if pid, err = b.restart(ctx, proxy, name, n, exp); err != nil {
			return err
		}
	}
	if b.opts.has(ScIdle) {
		if err := b.idle(ctx, proxy, pid, n); err != nil {
			return err
		}
	}
	if b.opts.has(ScChange) {
		if err := b.changes(ctx, proxy, n); err != nil {
			return err
		}
	}
	if b.opts.has(ScChurn) {
		if err := b.churn(ctx, proxy, pid, n); err != nil {
			return err
		}
	}
	return nil
}

// restart stops the proxy (SIGTERM: the kernel state stays) and starts it
// again; it returns the new pid.
func (b *bench) restart(ctx context.Context, proxy, name string, n int, exp expected) (int, error) {
	b.quiet(ctx)
	b.logf("%s, N=%d: restart over the programmed kernel", proxy, n)
	if err := b.stopProxy(ctx, name); err != nil {
		return 0, err
	}
	pid, err := b.startProxy(ctx, proxy, name)
	if err != nil {
		return 0, err
	}
	limit := b.opts.Timeout.Seconds()
	var r probe.WaitResult
	err = call(ctx, b.ag, node, "wait", probe.WaitSpec{
		Pid: pid, Metric: probe.MetricLastSync, MetricsURL: metricsURL,
		TrackVS: true, MaxIntervalMS: 1000, TimeoutS: limit,
	}, &r, b.opts.Timeout)
	if err != nil {
		return 0, fmt.Errorf("%s restart: %w", proxy, err)
	}
	b.set(proxy, rowRestart, n, unitS, valOrTimeout(r.Done, r.MetricAt, limit))
	if !r.Done {
		b.logf("%s, N=%d: no sync reported within %.0fs of the restart", proxy, n, limit)
		return pid, nil
	}
	b.set(proxy, rowRestartCPU, n, unitCPU, val(r.Stat.CPU))
	lost := 0
	if r.MinVS >= 0 {
		lost = max(exp.vs-r.MinVS, 0)
	}
	b.set(proxy, rowRestartLost, n, unitCount, val(float64(lost)))
	b.logf("%s, N=%d: first sync after the restart at %.1fs, CPU %.1fs, fewest virtual servers seen %d of %d",
		proxy, n, r.MetricAt, r.Stat.CPU, r.MinVS, exp.vs)
	return pid, nil
}

// idle measures periodic syncs with nothing changing.
func (b *bench) idle(ctx context.Context, proxy string, pid, n int) error {
	b.logf("%s, N=%d: idle resync, %d syncs", proxy, n, b.opts.IdleSyncs)
	var r probe.IdleResult
	if err := call(ctx, b.ag, node, "idle", probe.IdleSpec{
		Pid: pid, MetricsURL: metricsURL, Syncs: b.opts.IdleSyncs, TimeoutS: b.opts.Timeout.Seconds(),
	}, &r, b.opts.Timeout); err != nil {
		return fmt.Errorf("%s idle: %w", proxy, err)
	}
	b.set(proxy, rowIdleDur, n, unitS, val(r.DurationPerSync))
	b.set(proxy, rowIdleCPU, n, unitCPU, val(r.CPUPerSync))
	b.logf("%s, N=%d: %d syncs in %.0fs: %.2fs each, CPU %.2fs per sync", proxy, n, r.Syncs, r.Window, r.DurationPerSync, r.CPUPerSync)
	return nil
}

// freeStaticIPs are ClusterIPs for the Services the change scenario
// creates: the start of the Service range, which the API server's
// allocator keeps for static addresses (it hands out the rest first).
func freeStaticIPs(k int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 96, 0, byte(100 + k%150)})
}

// changes times single API writes until the kernel shows them.
func (b *bench) changes(ctx context.Context, proxy string, n int) error {
	S := b.opts.ChangeSamples
	if S == 0 {
		return nil
	}
	stepTimeout := min(b.opts.Timeout, 10*time.Minute)
	type plan struct {
		svc     *svc
		fresh   netip.Addr
		newName string
		newIP   netip.Addr
	}
	plans := make([]plan, S)
	var steps []probe.Expect
	cs := b.pop.cs
	for k := range plans {
		p := plan{svc: b.pop.get(b.rng.Intn(n)), fresh: b.pop.freshAddr(),
			newName: fmt.Sprintf("chg-%d-%d", b.runs, k), newIP: freeStaticIPs(b.runs*S + k)}
		plans[k] = p
		rs := fmt.Sprintf("%s:%d", p.fresh, targetPort)
		newVS := probe.VSKey(fmt.Sprintf("TCP/%s:%d", p.newIP, servicePort))
		steps = append(steps,
			probe.Expect{VS: probe.VSKey(p.svc.vs()), RS: rs, Present: true},
			probe.Expect{VS: probe.VSKey(p.svc.vs()), RS: rs, Present: false},
			probe.Expect{VS: newVS, Present: true, MinRS: b.opts.Endpoints},
			probe.Expect{VS: newVS, Present: false},
		)
	}
	// The new Services' endpoints exist before the Services: creating a
	// Service is then the one write timed, as when a Deployment's pods are
	// ready before its Service.
	var newSlices []string
	defer func() {
		for _, s := range newSlices {
			_ = cs.DiscoveryV1().EndpointSlices(namespace).Delete(context.Background(), s, metav1.DeleteOptions{})
		}
	}()
	for _, p := range plans {
		addrs := make([]netip.Addr, b.opts.Endpoints)
		for i := range addrs {
			addrs[i] = b.pop.freshAddr()
		}
		s, err := cs.DiscoveryV1().EndpointSlices(namespace).Create(ctx, endpointSlice(p.newName, addrs), metav1.CreateOptions{})
		if err != nil {
			return err
		}
		newSlices = append(newSlices, s.Name)
	}
	b.quiet(ctx)
	b.logf("%s, N=%d: %d single changes of each kind", proxy, n, S)

	ch, wait, err := stream(ctx, b.ag, node, "changes", probe.ChangesSpec{Steps: steps, IntervalMS: 50, StepTimeoutS: stepTimeout.Seconds()},
		time.Duration(len(steps))*(2*stepTimeout+10*time.Second))
	if err != nil {
		return err
	}
	lat := map[string][]sample{}
	t0 := make([]time.Time, len(steps))
	var werr error
	for ev := range ch {
		if werr != nil {
			continue // drain
		}
		switch ev.Ev {
		case "ready":
			i := ev.I
			p := plans[i/4]
			time.Sleep(time.Duration(1500+b.rng.Intn(2000)) * time.Millisecond)
			t0[i] = time.Now()
			switch i % 4 {
			case 0:
				werr = b.pop.setEndpoints(ctx, p.svc, append(b.pop.currentAddrs(p.svc), p.fresh))
			case 1:
				werr = b.pop.setEndpoints(ctx, p.svc, slices.DeleteFunc(b.pop.currentAddrs(p.svc), func(a netip.Addr) bool { return a == p.fresh }))
			case 2:
				_, werr = cs.CoreV1().Services(namespace).Create(ctx, &v1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: p.newName},
					Spec: v1.ServiceSpec{ClusterIP: p.newIP.String(), Ports: []v1.ServicePort{{
						Protocol: v1.ProtocolTCP, Port: servicePort, TargetPort: intstr.FromInt32(targetPort)}}},
				}, metav1.CreateOptions{})
			case 3:
				werr = cs.CoreV1().Services(namespace).Delete(ctx, p.newName, metav1.DeleteOptions{})
			}
		case "seen", "timeout":
			i := ev.I
			s := sample{V: ev.At.Sub(t0[i]).Seconds()}
			if ev.Ev == "timeout" {
				s = sample{V: stepTimeout.Seconds(), Above: true}
			}
			kind := changeKinds[i%4]
			lat[kind] = append(lat[kind], s)
		case "error":
			werr = fmt.Errorf("labbench changes: %s", ev.Msg)
		}
	}
	if err := wait(); err != nil && werr == nil {
		werr = err
	}
	for _, p := range plans { // Services left by a failed run
		_ = cs.CoreV1().Services(namespace).Delete(context.Background(), p.newName, metav1.DeleteOptions{})
	}
	if werr != nil {
		return fmt.Errorf("%s changes: %w", proxy, werr)
	}
	for _, k := range changeKinds {
		p50, p99 := percentile(lat[k], 50), percentile(lat[k], 99)
		b.set(proxy, changeRow(k, "p50"), n, unitS, p50)
		b.set(proxy, changeRow(k, "p99"), n, unitS, p99)
		b.logf("%s, N=%d: %s: p50 %s s, p99 %s s (%d samples)", proxy, n, k, p50, p99, len(lat[k]))
	}
	return nil
}

// churn replaces one endpoint of a Service at a fixed rate and times each
// change until the kernel shows the new real server.
func (b *bench) churn(ctx context.Context, proxy string, pid, n int) error {
	total := int(float64(b.opts.ChurnRate) * b.opts.ChurnDuration.Seconds())
	if total == 0 {
		return nil
	}
	drain := min(b.opts.Timeout, 10*time.Minute)
	perm := b.rng.Perm(n)
	type change struct {
		svc   *svc
		slot  int
		fresh netip.Addr
	}
	changes := make([]change, total)
	steps := make([]probe.ChurnStep, total)
	for j := range changes {
		// Each Service changes once per round over all n Services; the
		// slot replaced moves on each round, so a change is not undone by
		// a later one before 5 rounds.
		c := change{svc: b.pop.get(perm[j%n]), slot: (j / n) % b.opts.Endpoints, fresh: b.pop.freshAddr()}
		changes[j] = c
		steps[j] = probe.ChurnStep{
			Expect:   probe.Expect{VS: probe.VSKey(c.svc.vs()), RS: fmt.Sprintf("%s:%d", c.fresh, targetPort), Present: true},
			OffsetMS: j * 1000 / b.opts.ChurnRate,
		}
	}
	b.quiet(ctx)
	b.logf("%s, N=%d: churn, %d endpoint changes a second for %.0fs", proxy, n, b.opts.ChurnRate, b.opts.ChurnDuration.Seconds())
	ch, wait, err := stream(ctx, b.ag, node, "churn", probe.ChurnSpec{Pid: pid, Steps: steps, IntervalMS: 250, DrainS: drain.Seconds()},
		b.opts.ChurnDuration+drain+time.Minute)
	if err != nil {
		return err
	}
	t0 := make([]time.Time, total)
	t1 := make([]time.Time, total)
	var mu sync.Mutex
	var writeErr error
	var wg sync.WaitGroup
	var result probe.ChurnResult
	var perr error
	for ev := range ch {
		switch ev.Ev {
		case "ready":
			start := time.Now()
			work := make(chan int, total)
			for w := 0; w < 32; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := range work {
						c := changes[j]
						addrs := b.pop.currentAddrs(c.svc)
						addrs[c.slot] = c.fresh
						mu.Lock()
						t0[j] = time.Now()
						mu.Unlock()
						if err := b.pop.setEndpoints(ctx, c.svc, addrs); err != nil {
							mu.Lock()
							writeErr = err
							mu.Unlock()
						}
					}
				}()
			}
			go func() {
				defer close(work)
				for j := range changes {
					if d := time.Until(start.Add(time.Duration(steps[j].OffsetMS) * time.Millisecond)); d > 0 {
						time.Sleep(d)
					}
					work <- j
				}
			}()
		case "seen":
			t1[ev.I] = ev.At
		case "result":
			perr = jsonInto(ev.Result, &result)
		case "error":
			perr = fmt.Errorf("labbench churn: %s", ev.Msg)
		}
	}
	wg.Wait()
	if err := wait(); err != nil && perr == nil {
		perr = err
	}
	if perr == nil {
		perr = writeErr
	}
	if perr != nil {
		return fmt.Errorf("%s churn: %w", proxy, perr)
	}
	var lat []sample
	missed := 0
	for j := range changes {
		if t1[j].IsZero() || t0[j].IsZero() {
			missed++
			lat = append(lat, sample{V: drain.Seconds(), Above: true})
			continue
		}
		lat = append(lat, sample{V: max(t1[j].Sub(t0[j]).Seconds(), 0)})
	}
	p50, p99 := percentile(lat, 50), percentile(lat, 99)
	b.set(proxy, b.churnTitle(rowChurnP50), n, unitS, p50)
	b.set(proxy, b.churnTitle(rowChurnP99), n, unitS, p99)
	b.set(proxy, b.churnTitle(rowChurnCPU), n, unitCPU, val(result.CPU))
	b.set(proxy, b.churnTitle(rowChurnMissed), n, unitCount, val(float64(missed)))
	b.logf("%s, N=%d: churn: p50 %s s, p99 %s s, %d of %d not shown, CPU %.1fs over %.0fs (the probe: %.1fs CPU, %d rounds of %.2fs, %d of them table scans)",
		proxy, n, p50, p99, missed, total, result.CPU, result.Window, result.ProbeCPU, result.Rounds, result.RoundCost, result.Scans)
	return nil
}
