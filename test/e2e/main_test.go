//go:build e2e

// Package e2e proves the proxy under test (PROXY=ours or PROXY=upstream) in
// the lab: a real kernel with IPVS in a VM, a real API server and controller
// manager, node and pod network namespaces, real connections. Each case
// checks the kernel state (ipvsadm -Sn, ipset list, iptables-save) and real
// traffic from nodes and pods.
//
// Run with `make e2e` (or `make test`). The suite brings a fresh lab up and
// takes it down at the end; LAB_KEEP=1 leaves it up for inspection.
package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

var (
	lab labctl.Config
	cs  kubernetes.Interface
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx := context.Background()
	start := time.Now()
	cfg, err := labctl.DefaultConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// One lab per machine: wait for any other run to finish.
	unlock, err := cfg.Lock(ctx, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer unlock()
	if cur, err := labctl.Load(); err == nil {
		fmt.Println("e2e: taking down the lab that was up, to start from a fresh one")
		if err := labctl.Down(ctx, cur, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: lab down:", err)
			return 1
		}
	}
	fmt.Printf("e2e: bringing the lab up with PROXY=%s\n", cfg.Proxy)
	if err := labctl.Up(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		dumpLab(ctx, cfg)
		labctl.Down(ctx, cfg, os.Stdout)
		return 1
	}
	fmt.Printf("e2e: phase lab-up took %.0fs\n", time.Since(start).Seconds())
	lab = cfg
	if cs, err = lab.Client(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	tests := time.Now()
	code := m.Run()
	printFaultTable()
	fmt.Printf("e2e: phase scenarios took %.0fs\n", time.Since(tests).Seconds())
	if os.Getenv("LAB_KEEP") == "1" {
		fmt.Println("e2e: LAB_KEEP=1: the lab stays up (`lab down` removes it)")
		return code
	}
	down := time.Now()
	pids := lab.HostPIDs()
	err = labctl.Down(ctx, lab, os.Stdout)
	if err == nil {
		// `lab down` must leave nothing behind.
		err = labctl.CheckDown(lab, pids)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: lab down:", err)
		if code == 0 {
			code = 1
		}
	}
	fmt.Printf("e2e: phase lab-down took %.0fs; total %.0fs\n", time.Since(down).Seconds(), time.Since(start).Seconds())
	return code
}

// dumpLab prints what helps to understand a failure: host logs, each node's
// IPVS table and proxy log.
func dumpLab(ctx context.Context, c labctl.Config) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	fmt.Print(c.Report(ctx))
}
