package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// lockWait bounds how long iptables and iptables-restore wait for the
// xtables lock, in iptables' own arguments. Upstream kube-proxy (v1.37,
// pkg/util/iptables: WaitString "-w", WaitSecondsValue "5") passes `-w 5`
// to both. Releases up to v1.27 added `-W 100000` (poll every 0.1 s) for
// iptables >= 1.6.1, which later upstream dropped: iptables 1.8.9 ignores
// the interval ("Ignoring deprecated --wait-interval option.") and blocks
// on the lock until the wait runs out. Only the legacy backend takes the
// lock (/run/xtables.lock, or $XTABLES_LOCKFILE); iptables-nft accepts and
// ignores the flag, its changes being nftables transactions. The short
// form is the one every backend's iptables and iptables-restore accept
// (`-w5` is not).
var lockWait = []string{"-w", "5"}

// Timeouts on each iptables process: the lock wait above is bounded by
// iptables itself, these bound everything else (a hung kernel call, a
// binary that never exits), so that a sync never waits forever. Both are
// well above the lock wait, so a busy lock is reported by iptables as
// such rather than as a kill.
const (
	// restoreTimeout: iptables-restore and iptables-save handle whole
	// tables, including every other tool's rules (CNI plugins write tens
	// of thousands on big nodes, which take seconds).
	restoreTimeout = 30 * time.Second
	// commandTimeout: one iptables call handles one rule or lists one
	// table (or prints the version).
	commandTimeout = 10 * time.Second
)

// ErrTimeout is wrapped by the error of an iptables process killed at its
// timeout.
var ErrTimeout = errors.New("timed out")

// runBounded runs path with args, stdin as input, and kills it after
// timeout. It returns stdout and stderr; the error names the command, and
// says when it timed out.
func runBounded(timeout time.Duration, stdin string, path string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	// Should a killed process leave a child holding its pipes, stop
	// reading them soon after the kill instead of waiting for the child.
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	name := filepath.Base(path) + " " + strings.Join(args, " ")
	switch {
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("%s: %w after %v (killed)", name, ErrTimeout, timeout)
	case err != nil:
		err = fmt.Errorf("%s: %w", name, err)
	}
	return out.String(), errOut.String(), err
}

// withOutput adds a failed command's trimmed output to its error.
func withOutput(err error, output string) error {
	if output = strings.TrimSpace(output); output != "" {
		return fmt.Errorf("%w: %s", err, output)
	}
	return err
}
