package labctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// Lock serialises whole lab runs on this machine (there is one lab: one
// state dir, one set of ports). The e2e suite holds it from `up` to
// `down`; the lab CLI holds it for `up` and `down`. It waits for the
// holder, printing once that it waits.
func (c Config) Lock(ctx context.Context, w io.Writer) (unlock func(), err error) {
	f, err := os.OpenFile(c.StateDir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	said := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("locking %s.lock: %w", c.StateDir, err)
		}
		if !said {
			fmt.Fprintf(w, "another lab run holds %s.lock; waiting for it\n", c.StateDir)
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
