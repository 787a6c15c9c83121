package labctl

import (
	"context"
	"fmt"
	"io"
)

// Status prints what runs where.
func (c Config) Status(ctx context.Context, w io.Writer) error {
	fmt.Fprintf(w, "state %s, proxy %s, nodes %d\n", c.StateDir, c.Proxy, c.Nodes)
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "scheduler", "qemu"} {
		if pid, ok := c.hostProcPid(name); ok {
			fmt.Fprintf(w, "  host %-24s running (pid %d)\n", name, pid)
		} else {
			fmt.Fprintf(w, "  host %-24s NOT running (log %s)\n", name, c.LogFile(name))
		}
	}
	list, err := c.Agent().Daemons(ctx)
	if err != nil {
		fmt.Fprintf(w, "  vm   agent not answering: %v\n", err)
		return nil
	}
	for _, d := range list {
		state := "running"
		if !d.Running {
			state = "exited: " + d.Exit
		}
		fmt.Fprintf(w, "  vm   %-24s %s (log %s)\n", d.Name, state, d.LogPath)
	}
	return nil
}
