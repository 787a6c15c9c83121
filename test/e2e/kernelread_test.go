//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The proxy's IPVS reads (pkg/ipvs: the socket options for IPv4, a genl
// dump for IPv6, netlink plus /proc/net/ip_vs as the fallback) against a
// real kernel: pkg/ipvs's ipvskernel tests, built on the host and run in the
// VM, each in a fresh network namespace of node1.
func TestIPVSKernelReads(t *testing.T) {
	// A fresh name each time: the VM sees the repository through 9p and may
	// hold on to an older binary of the same name.
	bin := filepath.Join(lab.Repo, "_output", "bin", fmt.Sprintf("ipvs-kernel-%d.test", time.Now().UnixNano()))
	build := exec.Command("go", "test", "-c", "-tags", "ipvskernel", "-o", bin, "./pkg/ipvs")
	build.Dir = lab.Repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("step: build the ipvskernel tests: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = os.Remove(bin) })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	code, err := lab.Exec(ctx, "node1", []string{bin, "-test.run", "^TestKernelReads", "-test.v", "-test.count=1"}, &out, &out)
	if err != nil || code != 0 {
		t.Fatalf("step: the ipvskernel tests on node1: exit %d, %v\n%s", code, err, out.String())
	}
	t.Logf("ipvskernel tests on node1:\n%s", out.String())
}
