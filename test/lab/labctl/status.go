package labctl

import (
	"context"
	"fmt"
	"io"
	"strings"
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

// Report gathers what explains a failure: the host processes and the tail of
// their logs, and for each node its IPVS table and the proxy's and
// kubelet's logs.
func (c Config) Report(ctx context.Context) string {
	var b strings.Builder
	fmt.Fprintln(&b, "===== lab report")
	_ = c.Status(ctx, &b)
	for _, name := range []string{"kube-apiserver", "kube-controller-manager", "scheduler", "vm-console"} {
		fmt.Fprintf(&b, "----- %s log (tail)\n%s\n", name, tailFile(c.LogFile(name), 15))
	}
	for _, n := range c.NodeNames() {
		table, err := c.Output(ctx, n, "ipvsadm", "-Ln")
		if err != nil {
			table = err.Error()
		}
		fmt.Fprintf(&b, "----- %s: ipvsadm -Ln\n%s", n, table)
		fmt.Fprintf(&b, "----- %s: proxy log (tail)\n%s", n, c.guestTail(ctx, ProxyLogPath(n), 40))
		fmt.Fprintf(&b, "----- %s: kubelet log (tail)\n%s", n, c.guestTail(ctx, "/var/log/lab/"+kubeletDaemon(n)+".log", 20))
	}
	return b.String()
}
