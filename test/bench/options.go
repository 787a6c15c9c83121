// Package bench is the benchmark harness behind `make bench`: in the lab VM
// (a real kernel under qemu), against one API server state, it runs our
// proxy and then upstream kube-proxy v1.37.2 in IPVS mode on the same node,
// each in a fresh network namespace, measures both and the kernel's own
// floor, and writes a table of the figures and their ratios.
//
// The probe inside the VM is test/bench/probe (the labbench command); this
// package drives the lab from the host. docs/benchmarks.md describes the
// method.
package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Scenario names, as BENCH_SCENARIOS takes them.
const (
	ScCold    = "cold"
	ScRestart = "restart"
	ScIdle    = "idle"
	ScChange  = "change"
	ScChurn   = "churn"
	ScFloor   = "floor"
)

var allScenarios = []string{ScCold, ScRestart, ScIdle, ScChange, ScChurn, ScFloor}

// Options are the benchmark's settings (BENCH_* in the environment).
type Options struct {
	// Sizes: numbers of Services, each run in turn (ascending).
	Sizes []int
	// UpstreamMax: upstream runs only at sizes up to this (its cold sync at
	// 10k takes well over half an hour in the VM).
	UpstreamMax int
	Proxies     []string // "ours", "upstream"
	Scenarios   []string
	// Timeout bounds every wait for a proxy (a cold sync, a restart); the
	// table reports ">T s (timed out)".
	Timeout time.Duration
	// Endpoints per Service; every NodePortEvery-th Service is a NodePort.
	Endpoints     int
	NodePortEvery int
	// ChangeSamples: single changes of each kind.
	ChangeSamples int
	// ChurnRate endpoint changes per second for ChurnDuration.
	ChurnRate     int
	ChurnDuration time.Duration
	// IdleSyncs: periodic syncs to average over.
	IdleSyncs int
	OutDir    string
	Keep      bool // leave the lab up afterwards
	Seed      int64
	// OursEnv is added to our proxy's environment (NAME=VALUE each), to
	// compare settings such as GOGC in the same VM.
	OursEnv []string
}

// DefaultOptions reads BENCH_SIZES (1000,5000,10000), BENCH_UPSTREAM_10K
// (1: upstream at 10000 and above too), BENCH_PROXIES (ours,upstream),
// BENCH_SCENARIOS (cold,restart,idle,change,churn,floor), BENCH_TIMEOUT
// (seconds, 2400), BENCH_CHANGES (5), BENCH_CHURN_RATE (50),
// BENCH_CHURN_SECONDS (120), BENCH_IDLE_SYNCS (3), BENCH_OUT
// (_output/bench under repo), BENCH_KEEP (1: keep the lab up), BENCH_SEED,
// BENCH_OURS_ENV (NAME=VALUE,... for our proxy).
func DefaultOptions(repo string) (Options, error) {
	o := Options{
		UpstreamMax: 5000, Endpoints: 5, NodePortEvery: 5,
		OutDir: filepath.Join(repo, "_output", "bench"),
		Seed:   1,
	}
	var err error
	if o.Sizes, err = envInts("BENCH_SIZES", "1000,5000,10000"); err != nil {
		return o, err
	}
	slices.Sort(o.Sizes)
	o.Sizes = slices.Compact(o.Sizes)
	for _, n := range o.Sizes {
		if n < 10 || n > 12000 {
			// 20% NodePorts must fit the 2768 ports of 30000-32767.
			return o, fmt.Errorf("BENCH_SIZES: %d: want 10..12000", n)
		}
	}
	if os.Getenv("BENCH_UPSTREAM_10K") == "1" {
		o.UpstreamMax = 1 << 30
	}
	o.Proxies = envList("BENCH_PROXIES", "ours,upstream")
	for _, p := range o.Proxies {
		if p != "ours" && p != "upstream" {
			return o, fmt.Errorf("BENCH_PROXIES: %q: want ours and/or upstream", p)
		}
	}
	o.Scenarios = envList("BENCH_SCENARIOS", strings.Join(allScenarios, ","))
	for _, s := range o.Scenarios {
		if !slices.Contains(allScenarios, s) {
			return o, fmt.Errorf("BENCH_SCENARIOS: %q: want some of %s", s, strings.Join(allScenarios, ","))
		}
	}
	if !slices.Contains(o.Scenarios, ScCold) && slices.ContainsFunc(o.Scenarios, func(s string) bool { return s != ScFloor }) {
		// Every proxy scenario starts from a programmed kernel.
		o.Scenarios = append(o.Scenarios, ScCold)
	}
	t, err := envInt("BENCH_TIMEOUT", 2400)
	if err != nil {
		return o, err
	}
	o.Timeout = time.Duration(t) * time.Second
	if o.ChangeSamples, err = envInt("BENCH_CHANGES", 5); err != nil {
		return o, err
	}
	if o.ChurnRate, err = envInt("BENCH_CHURN_RATE", 50); err != nil {
		return o, err
	}
	cs, err := envInt("BENCH_CHURN_SECONDS", 120)
	if err != nil {
		return o, err
	}
	o.ChurnDuration = time.Duration(cs) * time.Second
	if o.IdleSyncs, err = envInt("BENCH_IDLE_SYNCS", 3); err != nil {
		return o, err
	}
	if v := os.Getenv("BENCH_OUT"); v != "" {
		o.OutDir = v
	}
	o.Keep = os.Getenv("BENCH_KEEP") == "1"
	for _, kv := range envList("BENCH_OURS_ENV", "") {
		if name, _, ok := strings.Cut(kv, "="); !ok || name == "" {
			return o, fmt.Errorf("BENCH_OURS_ENV: %q: want NAME=VALUE", kv)
		}
		o.OursEnv = append(o.OursEnv, kv)
	}
	if s, err := envInt("BENCH_SEED", 1); err != nil {
		return o, err
	} else {
		o.Seed = int64(s)
	}
	return o, nil
}

func (o Options) has(s string) bool { return slices.Contains(o.Scenarios, s) }

// runs reports whether proxy runs at size n.
func (o Options) runs(proxy string, n int) bool {
	return slices.Contains(o.Proxies, proxy) && (proxy == "ours" || n <= o.UpstreamMax)
}

func envList(k, def string) []string {
	v := os.Getenv(k)
	if v == "" {
		v = def
	}
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func envInts(k, def string) ([]int, error) {
	var out []int
	for _, f := range envList(k, def) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %v", k, f, err)
		}
		out = append(out, n)
	}
	return out, nil
}

func envInt(k string, def int) (int, error) {
	v := os.Getenv(k)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s=%q: want a non-negative integer", k, v)
	}
	return n, nil
}
