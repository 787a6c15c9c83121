package labctl

import (
	"context"
	"fmt"
	"strings"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
)

// Helpers for the benchmark (test/bench), which runs one proxy after the
// other on node1, each in a fresh network namespace.

// GuestBin is the path inside the VM of a binary copied there by CopyToVM
// (the VM's tmpfs: starting a process from the 9p mount is slow).
func GuestBin(name string) string { return guestBinDir + "/" + name }

// CopyToVM copies host files (the host's root is the VM's) into the VM's
// binary directory.
func (c Config) CopyToVM(ctx context.Context, hostPaths ...string) error {
	var b strings.Builder
	for _, f := range hostPaths {
		fmt.Fprintf(&b, "cp %s %s/\n", f, guestBinDir)
	}
	_, err := c.vmSh(ctx, b.String())
	return err
}

// ProxyArgvOf is the lab's command line for proxy ("ours" or "upstream")
// on a node, extra flags appended.
func (c Config) ProxyArgvOf(proxy, node string, extra ...string) []string {
	c.Proxy = proxy
	return c.ProxyArgv(node, extra...)
}

// ProxyBinaryOf is the host path of proxy ("ours" or "upstream").
func (c Config) ProxyBinaryOf(proxy string) string {
	c.Proxy = proxy
	return c.proxyBinary()
}

// StopNode stops what the lab runs for a node (its proxy and its kubelet),
// leaving the node's namespace to the caller.
func (c Config) StopNode(ctx context.Context, node string) error {
	for _, name := range []string{proxyDaemon(node), kubeletDaemon(node)} {
		if st, err := c.daemon(ctx, name); err != nil || !st.Running {
			continue
		}
		if _, err := c.Agent().StopDaemon(ctx, agent.SignalRequest{Name: name}); err != nil {
			return fmt.Errorf("stopping %s: %w", name, err)
		}
	}
	return nil
}

// ResetNodeNetns deletes a node's network namespace, with everything a
// proxy programmed in it (IPVS, ipsets, iptables, kube-ipvs0), and builds
// it again as `lab up` does: eth0 on the bridge with the node's addresses,
// the default route, forwarding on. Nothing may run in it.
func (c Config) ResetNodeNetns(ctx context.Context, node string) error {
	i, err := c.nodeIndex(node)
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "ip netns del %s 2>/dev/null || true\n", node)
	// The veth pair goes with the namespace, a moment later.
	fmt.Fprintf(&b, "for t in $(seq 100); do ip link show v%s >/dev/null 2>&1 || break; sleep 0.1; done\n", node)
	fmt.Fprintf(&b, "ip netns add %s\n", node)
	fmt.Fprintf(&b, "ip netns exec %s sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0\n", node)
	fmt.Fprintf(&b, "ip link add v%s type veth peer name eth0 netns %s\n", node, node)
	fmt.Fprintf(&b, "ip link set v%s master labbr0 up\n", node)
	fmt.Fprintf(&b, "ip -n %s link set lo up\nip -n %s addr add %s/24 dev eth0\n", node, node, NodeAddr(i))
	fmt.Fprintf(&b, "ip -n %s addr add %s/64 dev eth0 nodad\nip -n %s link set eth0 up\n", node, NodeAddr6(i), node)
	fmt.Fprintf(&b, "ip -n %s route add default via %s\n", node, BridgeAddr)
	fmt.Fprintf(&b, "ip netns exec %s sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1\n", node)
	for j := 1; j <= c.Nodes; j++ {
		if j != i {
			fmt.Fprintf(&b, "ip -n %s route add %s via %s\n", node, PodCIDR(j), NodeAddr(j))
			fmt.Fprintf(&b, "ip -n %s route add %s via %s\n", node, PodCIDR6(j), NodeAddr6(j))
		}
	}
	if _, err := c.vmSh(ctx, b.String()); err != nil {
		return fmt.Errorf("rebuilding %s's namespace: %w", node, err)
	}
	return nil
}
