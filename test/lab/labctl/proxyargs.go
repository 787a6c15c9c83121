package labctl

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
)

// ProxyArgv is the command line the lab runs the proxy under test with on a
// node (in the node's network namespace), extra flags included.
func (c Config) ProxyArgv(node string, extra ...string) []string {
	return append(c.proxyArgv(node), extra...)
}

// ProxyBinaryInVM is the path of the proxy under test inside the VM:
// kube-ipvs-proxy (PROXY=ours) or kube-proxy (PROXY=upstream).
func (c Config) ProxyBinaryInVM() string {
	if c.Proxy == "upstream" {
		return guestBinDir + "/kube-proxy"
	}
	return guestBinDir + "/kube-ipvs-proxy"
}

// RestartProxyWithArgs stops the proxy on a node (SIGTERM; the kernel
// state stays) and starts it again with the lab's command line plus extra
// flags (later flags win). A nil extra restores the lab's default command
// line. It returns once the new proxy runs; see WaitProxyHealthy.
func (c Config) RestartProxyWithArgs(ctx context.Context, node string, extra []string) error {
	if _, err := c.nodeIndex(node); err != nil {
		return err
	}
	if st, err := c.daemon(ctx, proxyDaemon(node)); err == nil && st.Running {
		if err := c.StopProxy(ctx, node); err != nil {
			return fmt.Errorf("stopping the proxy on %s: %w", node, err)
		}
	}
	argv := c.ProxyArgv(node, extra...)
	if _, err := c.Agent().StartDaemon(ctx, agent.DaemonSpec{Name: proxyDaemon(node), Netns: node, Argv: argv}); err != nil {
		return fmt.Errorf("starting the proxy on %s with %q: %w", node, extra, err)
	}
	return nil
}

// ProxyRunning reports whether the proxy daemon of a node runs, and with
// which command line.
func (c Config) ProxyRunning(ctx context.Context, node string) (running bool, argv []string, err error) {
	st, err := c.daemon(ctx, proxyDaemon(node))
	if err != nil {
		return false, nil, err
	}
	return st.Running, st.Argv, nil
}

// ProxyHasDefaultArgs reports whether argv is the lab's default command
// line for the node.
func (c Config) ProxyHasDefaultArgs(node string, argv []string) bool {
	return slices.Equal(argv, c.proxyArgv(node))
}

// WaitProxyHealthy waits until the proxy on a node runs and answers
// /healthz on 127.0.0.1:10256 in the node's namespace. An exited proxy is
// an error at once, with the end of its log.
func (c Config) WaitProxyHealthy(ctx context.Context, node string, timeout time.Duration) error {
	return poll(ctx, timeout, func() (bool, error) {
		st, err := c.daemon(ctx, proxyDaemon(node))
		if err != nil {
			return false, err
		}
		if !st.Running {
			return false, fmt.Errorf("the proxy on %s exited (%s):\n%s", node, st.Exit, c.guestTail(ctx, ProxyLogPath(node), 40))
		}
		_, err = c.Agent().Output(ctx, agent.ExecRequest{Netns: node, TimeoutSeconds: 5,
			Argv: []string{"curl", "-sf", "-m", "2", "-o", "/dev/null", "http://127.0.0.1:10256/healthz"}})
		return err == nil, nil
	}, func() string {
		return fmt.Sprintf("the proxy on %s is not healthy; its log:\n%s", node, c.guestTail(ctx, ProxyLogPath(node), 40))
	})
}
