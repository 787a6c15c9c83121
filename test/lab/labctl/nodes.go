package labctl

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
)

// Each node is a network namespace in the VM with a lab kubelet (in the VM's
// root namespace, managing that node's pods) and the proxy under test (in
// the node's namespace: IPVS, ipset, iptables and conntrack are per namespace).

func proxyDaemon(node string) string   { return "proxy-" + node }
func kubeletDaemon(node string) string { return "kubelet-" + node }

// proxyBinary is the host path of the selected proxy.
func (c Config) proxyBinary() string {
	if c.Proxy == "upstream" {
		return c.toolBin("kube-proxy")
	}
	return c.ourBin("kube-ipvs-proxy")
}

// copyBinaries copies the binaries the VM runs often into its tmpfs.
func (c Config) copyBinaries(ctx context.Context) error {
	var b strings.Builder
	for _, f := range []string{c.ourBin("labkubelet"), c.ourBin("labecho"), c.proxyBinary()} {
		fmt.Fprintf(&b, "cp %s %s/\n", f, guestBinDir)
	}
	_, err := c.vmSh(ctx, b.String())
	return err
}

func (c Config) proxyArgv(node string) []string {
	kubeconfig := guestStateDir + "/" + node + ".kubeconfig"
	var argv []string
	if c.Proxy == "upstream" {
		argv = []string{guestBinDir + "/kube-proxy", "--proxy-mode=ipvs",
			// A node namespace cannot set the global conntrack table size.
			"--conntrack-max-per-core=0",
		}
	} else {
		argv = []string{guestBinDir + "/kube-ipvs-proxy"}
	}
	argv = append(argv, "--kubeconfig="+kubeconfig, "--hostname-override="+node,
		"--cluster-cidr="+ClusterCIDRs, "--v=2")
	return append(argv, c.ProxyArgs...)
}

// StartProxy starts the proxy under test on a node.
func (c Config) StartProxy(ctx context.Context, node string) error {
	_, err := c.Agent().StartDaemon(ctx, agent.DaemonSpec{Name: proxyDaemon(node), Netns: node, Argv: c.proxyArgv(node)})
	return err
}

// StopProxy stops the proxy on a node with SIGTERM (SIGKILL after 10 s).
func (c Config) StopProxy(ctx context.Context, node string) error {
	_, err := c.Agent().StopDaemon(ctx, agent.SignalRequest{Name: proxyDaemon(node)})
	return err
}

// ProxyLogPath is the proxy's log file inside the VM.
func ProxyLogPath(node string) string { return "/var/log/lab/" + proxyDaemon(node) + ".log" }

func (c Config) startKubelet(ctx context.Context, i int) error {
	node := NodeName(i)
	_, err := c.Agent().StartDaemon(ctx, agent.DaemonSpec{Name: kubeletDaemon(node), Argv: []string{
		guestBinDir + "/labkubelet", "run", "--node=" + node,
		"--kubeconfig=" + guestStateDir + "/" + node + ".kubeconfig",
		"--pod-cidr=" + PodCIDR(i).String() + "," + PodCIDR6(i).String(), "--node-netns=" + node,
		"--echo-binary=" + guestBinDir + "/labecho", "--state-dir=" + guestStateDir,
	}})
	return err
}

// startNodes pushes the node kubeconfigs, then starts kubelets and proxies.
func (c Config) startNodes(ctx context.Context) error {
	for i := 1; i <= c.Nodes; i++ {
		n := NodeName(i)
		if err := c.putFile(ctx, c.path(n+".kubeconfig"), filepath.Join(guestStateDir, n+".kubeconfig"), 0o600); err != nil {
			return fmt.Errorf("copying %s's kubeconfig: %w", n, err)
		}
		if err := c.startKubelet(ctx, i); err != nil {
			return fmt.Errorf("starting %s's kubelet: %w", n, err)
		}
		if err := c.StartProxy(ctx, n); err != nil {
			return fmt.Errorf("starting %s's proxy: %w", n, err)
		}
	}
	return nil
}

// waitProxies waits until every node's proxy answers /healthz on :10256.
func (c Config) waitProxies(ctx context.Context) error {
	for _, n := range c.NodeNames() {
		err := poll(ctx, 3*time.Minute, func() (bool, error) {
			st, err := c.daemon(ctx, proxyDaemon(n))
			if err != nil {
				return false, err
			}
			if !st.Running {
				return false, fmt.Errorf("the proxy on %s exited (%s):\n%s", n, st.Exit, c.guestTail(ctx, ProxyLogPath(n), 40))
			}
			_, err = c.Agent().Output(ctx, agent.ExecRequest{Netns: n, TimeoutSeconds: 5,
				Argv: []string{"curl", "-sf", "-m", "2", "-o", "/dev/null", "http://127.0.0.1:10256/healthz"}})
			return err == nil, nil
		}, func() string {
			return fmt.Sprintf("the proxy on %s is not healthy; its log:\n%s", n, c.guestTail(ctx, ProxyLogPath(n), 40))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (c Config) daemon(ctx context.Context, name string) (agent.DaemonStatus, error) {
	list, err := c.Agent().Daemons(ctx)
	if err != nil {
		return agent.DaemonStatus{}, err
	}
	for _, d := range list {
		if d.Name == name {
			return d, nil
		}
	}
	return agent.DaemonStatus{}, fmt.Errorf("no daemon %s in the VM", name)
}

// guestTail returns the end of a file in the VM.
func (c Config) guestTail(ctx context.Context, path string, n int) string {
	out, err := c.Agent().Output(ctx, agent.ExecRequest{Argv: []string{"tail", "-n", fmt.Sprint(n), path}})
	if err != nil {
		return fmt.Sprintf("(cannot read %s in the VM: %v)", path, err)
	}
	return out
}
