//go:build linux && ipvskernel

package ipvs

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// The scheduler probe on a real kernel: a scheduler it has loads, one it
// has no module for answers ENOENT, nothing is left behind, and another
// tool's firewall-mark server on the probe's mark is left alone. (Named
// TestKernelReads* so that e2e's TestIPVSKernelReads runs it in the VM.)
func TestKernelReadsProbeScheduler(t *testing.T) {
	enterNewNetns(t)
	foreign := fmt.Sprintf("-A -f %d -s wlc\n", probeMarks[0])
	ipvsadmRestore(t, foreign)
	k, err := NewKernelIPVS()
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	for _, name := range []string{"rr", "sh", "mh"} {
		if err := k.ProbeScheduler(name); err != nil {
			t.Errorf("ProbeScheduler(%s) = %v, want nil", name, err)
		}
	}
	if err := k.ProbeScheduler("nosuchsched"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("ProbeScheduler(nosuchsched) = %v, want ENOENT", err)
	}
	// twos came with Linux 6.2: whether it loads follows the module's
	// presence in this kernel.
	_, noTwos := exec.Command("modinfo", "ip_vs_twos").CombinedOutput()
	if err := k.ProbeScheduler("twos"); (err != nil) != (noTwos != nil) || (err != nil && !errors.Is(err, syscall.ENOENT)) {
		t.Errorf("ProbeScheduler(twos) = %v, modinfo ip_vs_twos: %v", err, noTwos)
	}
	out, err := exec.Command("ipvsadm", "-Sn").CombinedOutput()
	if err != nil {
		t.Fatalf("ipvsadm -Sn: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != strings.TrimSpace(foreign) {
		t.Errorf("after the probes, ipvsadm -Sn:\n%s\nwant only the other tool's server:\n%s", got, foreign)
	}
}
