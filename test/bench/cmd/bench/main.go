// Command bench runs the benchmark (`make bench`): our proxy and upstream
// kube-proxy in IPVS mode in the lab VM, against the same API state, one
// after the other, and the kernel's own floor. It writes
// _output/bench/results.md and results.csv and prints the table.
// Settings come from BENCH_* and LAB_* in the environment (see
// docs/benchmarks.md).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/bench"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	lab, err := labctl.DefaultConfig()
	if err != nil {
		fail(err)
	}
	o, err := bench.DefaultOptions(lab.Repo)
	if err != nil {
		fail(err)
	}
	if err := bench.Run(ctx, o, lab, os.Stdout); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
