package iptables

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// holdXtablesLock takes the xtables lock as iptables-legacy does (flock
// LOCK_EX on the lock file) and returns the function that releases it.
// The lock is released at the end of the test in any case.
func holdXtablesLock(t *testing.T, path string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// Non-blocking: nobody else uses this file, so it must be free now.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		t.Fatalf("flock %s: %v", path, err)
	}
	released := false
	release = func() {
		if released {
			return
		}
		released = true
		// Closing the only descriptor drops the flock.
		if err := f.Close(); err != nil {
			t.Errorf("releasing the xtables lock: %v", err)
		}
	}
	t.Cleanup(release)
	return release
}

// While another process holds the xtables lock, an apply that must change
// the rules fails after lockWait (well before the process timeout) with
// iptables' own message, and succeeds once the lock is free. Only
// iptables-legacy takes the lock; iptables-nft applies regardless.
func TestKernelLockWait(t *testing.T) {
	for _, backend := range []Backend{BackendLegacy, BackendNFT} {
		t.Run(string(backend), func(t *testing.T) {
			requireKernel(t, backend)
			enterNewNetns(t)
			// The lock file is the same in every network namespace:
			// holding /run/xtables.lock would stall every iptables-legacy
			// on the host. iptables takes the path from XTABLES_LOCKFILE
			// (1.8.9 here; default /run/xtables.lock).
			lockPath := filepath.Join(t.TempDir(), "xtables.lock")
			t.Setenv("XTABLES_LOCKFILE", lockPath)

			a := newRealApplier(t, backend)
			desired := Plan(fullSnapshot(), fullConfig())
			if _, err := a.Apply(desired); err != nil {
				t.Fatalf("first apply: %v", err)
			}
			want := kernelState(t, backend)
			// Drift that only iptables-restore repairs.
			run(t, "iptables-"+string(backend), "-t", "nat", "-F", chainServices)

			release := holdXtablesLock(t, lockPath)
			start := time.Now()
			_, err := a.Apply(desired)
			took := time.Since(start)
			start = time.Now()
			_, listErr := a.Tables[IPv4].ListTable(TableNAT)
			listTook := time.Since(start)
			t.Logf("with the lock held: apply %v (%v); listing %v (%v)", err, took, listErr, listTook)
			if backend == BackendLegacy {
				for _, c := range []struct {
					what string
					err  error
					took time.Duration
				}{{"apply (iptables-restore)", err, took}, {"ListTable (iptables -S)", listErr, listTook}} {
					if c.err == nil || !strings.Contains(c.err.Error(), "xtables lock") {
						t.Errorf("%s with the lock held: err = %v, want iptables' lock message", c.what, c.err)
					}
					// Bounded by the lock wait, not by the timeouts.
					if c.took < 4*time.Second || c.took > 15*time.Second {
						t.Errorf("%s with the lock held returned after %v, want about 5s", c.what, c.took)
					}
				}
			} else if err != nil || listErr != nil {
				t.Errorf("iptables-nft with the xtables lock held: apply %v, listing %v; want no error", err, listErr)
			}

			release()
			ch, err := a.Apply(desired)
			if err != nil {
				t.Fatalf("apply after the lock is free: %v", err)
			}
			if backend == BackendLegacy && !slices.Contains(ch.ChainsWritten, "IPv4 nat/"+chainServices) {
				t.Errorf("apply after the lock is free wrote %v, want %s", ch.ChainsWritten, chainServices)
			}
			if got := kernelState(t, backend); got != want {
				t.Errorf("state after the lock is free differs:\n%s", lineDiff(want, got))
			}
		})
	}
}
