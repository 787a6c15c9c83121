package labctl

import (
	"context"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
)

// Faults the reliability cases inject.

// KillProxy kills a node's proxy with SIGKILL (with whatever it runs, e.g.
// an iptables-restore in the middle of a sync) and waits until it is gone.
func (c Config) KillProxy(ctx context.Context, node string) error {
	_, err := c.Agent().StopDaemon(ctx, agent.SignalRequest{Name: proxyDaemon(node), Signal: 9})
	return err
}

// StopAPIServer stops the API server (SIGTERM, SIGKILL after 10 s).
func (c Config) StopAPIServer() error { return c.stopHostProc("kube-apiserver", 10*time.Second) }

// StartAPIServer starts the API server again and waits until it is ready.
func (c Config) StartAPIServer(ctx context.Context) error {
	if err := c.startAPIServer(); err != nil {
		return err
	}
	return c.waitAPIServer(ctx)
}

// OtherProxy is the proxy that is not under test: "upstream" when PROXY is
// ours, "ours" when it is upstream.
func (c Config) OtherProxy() string {
	if c.Proxy == "upstream" {
		return "ours"
	}
	return "upstream"
}

// StartOtherProxy starts the other proxy (OtherProxy) on a node in place
// of the one under test, which must be stopped, with the lab's command
// line for it plus extra flags (later flags win). Its binary is read from
// the host through the VM's root.
func (c Config) StartOtherProxy(ctx context.Context, node string, extra ...string) error {
	other := c
	other.Proxy = c.OtherProxy()
	argv := append(other.proxyArgv(node), extra...)
	if other.Proxy == "upstream" {
		argv[0] = c.toolBin("kube-proxy")
	} else {
		argv[0] = c.ourBin("kube-ipvs-proxy")
	}
	_, err := c.Agent().StartDaemon(ctx, agent.DaemonSpec{Name: proxyDaemon(node), Netns: node, Argv: argv})
	return err
}

// StartProxyArgv starts a node's proxy daemon with the given command line
// (e.g. ProxyArgv behind a wrapper that puts it in a cgroup).
func (c Config) StartProxyArgv(ctx context.Context, node string, argv []string) error {
	_, err := c.Agent().StartDaemon(ctx, agent.DaemonSpec{Name: proxyDaemon(node), Netns: node, Argv: argv})
	return err
}
