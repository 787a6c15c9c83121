package labctl

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
)

// The VM boots Debian's kernel (unpacked in the cache by install-deps.sh)
// with a busybox initramfs that mounts the host's root filesystem read-only
// over 9p under a tmpfs overlay. Its only network is qemu's user network with
// restrict=on: the guest reaches the API server through a guestfwd and the
// host reaches the guest agent through a hostfwd; nothing else gets in or out.

// Agent returns a client for the guest agent.
func (c Config) Agent() *agent.Client {
	return agent.NewClient(fmt.Sprintf("http://127.0.0.1:%d", c.AgentPort))
}

func (c Config) kernelPaths() (kernel, initrd, kroot string, err error) {
	kdir := filepath.Join(c.Cache, "kernel")
	ver, err := os.Readlink(filepath.Join(kdir, "current"))
	if err != nil {
		return "", "", "", fmt.Errorf("no lab kernel in %s: run test/lab/install-deps.sh (make lab-deps): %w", kdir, err)
	}
	kroot = filepath.Join(kdir, ver)
	kernel = filepath.Join(kroot, "boot", "vmlinuz-"+ver)
	initrd = filepath.Join(kdir, "initramfs")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			return "", "", "", fmt.Errorf("lab kernel incomplete: %w (run make lab-deps)", err)
		}
	}
	return kernel, initrd, kroot, nil
}

func (c Config) startVM() error {
	kernel, initrd, kroot, err := c.kernelPaths()
	if err != nil {
		return err
	}
	// qemu starts one pipe per guest connection to the API server (the cmd:
	// form; the tcp: form carries only the first connection).
	pipe := fmt.Sprintf("%s pipe 127.0.0.1:%d", c.ourBin("lab"), c.APIPort)
	netdev := strings.Join([]string{
		"user", "id=n0", "restrict=on", "net=10.0.2.0/24",
		fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:%d", c.AgentPort, guestAgentPort),
		fmt.Sprintf("guestfwd=tcp:%s:%d-cmd:%s", APIServerGuestAddr, c.APIPort, pipe),
	}, ",")
	appendArgs := strings.Join([]string{
		"console=ttyS0", "panic=-1", "quiet",
		"lab.init=" + filepath.Join(c.Repo, "test", "lab", "vm", "guest-init.sh"),
		"lab.kroot=" + kroot,
		"lab.bin=" + filepath.Join(c.Repo, "_output", "bin"),
	}, " ")
	return c.startHostProc("qemu", []string{"qemu-system-x86_64",
		"-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", fmt.Sprint(c.MemoryMiB),
		"-kernel", kernel, "-initrd", initrd, "-append", appendArgs,
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=",
		"-display", "none", "-serial", "file:" + c.LogFile("vm-console"), "-monitor", "none",
		"-no-reboot",
	})
}

func (c Config) waitAgent(ctx context.Context) error {
	ag := c.Agent()
	return poll(ctx, 3*time.Minute, func() (bool, error) {
		if _, ok := c.hostProcPid("qemu"); !ok {
			return false, fmt.Errorf("qemu exited:\n%s\nconsole:\n%s", tailFile(c.LogFile("qemu"), 20), tailFile(c.LogFile("vm-console"), 30))
		}
		return ag.Healthy(ctx), nil
	}, func() string {
		return "guest agent not answering; VM console:\n" + tailFile(c.LogFile("vm-console"), 40)
	})
}

// vmSh runs a shell script in the VM's root namespace.
func (c Config) vmSh(ctx context.Context, script string) (string, error) {
	return c.Agent().Output(ctx, agent.ExecRequest{Argv: []string{"sh", "-ec", script}})
}

// putFile writes a host file's content to a path in the VM.
func (c Config) putFile(ctx context.Context, hostPath, guestPath string, mode os.FileMode) error {
	data, err := os.ReadFile(hostPath)
	if err != nil {
		return err
	}
	_, err = c.Agent().Output(ctx, agent.ExecRequest{
		Argv:  []string{"sh", "-c", fmt.Sprintf("cat > %s.tmp && chmod %o %s.tmp && mv %s.tmp %s", guestPath, mode, guestPath, guestPath, guestPath)},
		Stdin: data,
	})
	return err
}

// setupNetwork builds the node network in the VM: a bridge, one namespace
// per node on it, routes between the nodes' pod CIDRs, and masquerading of
// the nodes' traffic to the API server through the VM's uplink. Dual-stack:
// the same for IPv6 (see the addressing in config.go), without a default
// route (nothing outside the VM is reachable over IPv6).
//
// Duplicate address detection is off in the node namespaces (and the
// bridge's address is added nodad): the addresses are unique by
// construction, and DAD would keep each one tentative, unusable, for a
// second or more after it is added. The namespace's default applies to
// every interface created in it afterwards: its eth0 here and the node
// side of each pod veth (the lab kubelet's).
func (c Config) setupNetwork(ctx context.Context) error {
	var b strings.Builder
	fmt.Fprintf(&b, "ip link add labbr0 type bridge mcast_snooping 0\nip addr add %s/24 dev labbr0\n", BridgeAddr)
	fmt.Fprintf(&b, "ip addr add %s/64 dev labbr0 nodad\nip link set labbr0 up\n", BridgeAddr6)
	fmt.Fprintf(&b, "iptables -t nat -A POSTROUTING -s %s -o eth0 -j MASQUERADE\n", NodeNet)
	for i := 1; i <= c.Nodes; i++ {
		n := NodeName(i)
		fmt.Fprintf(&b, "ip netns add %s\n", n)
		fmt.Fprintf(&b, "ip netns exec %s sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0\n", n)
		fmt.Fprintf(&b, "ip link add v%s type veth peer name eth0 netns %s\n", n, n)
		fmt.Fprintf(&b, "ip link set v%s master labbr0 up\n", n)
		fmt.Fprintf(&b, "ip -n %s link set lo up\nip -n %s addr add %s/24 dev eth0\n", n, n, NodeAddr(i))
		fmt.Fprintf(&b, "ip -n %s addr add %s/64 dev eth0 nodad\nip -n %s link set eth0 up\n", n, NodeAddr6(i), n)
		fmt.Fprintf(&b, "ip -n %s route add default via %s\n", n, BridgeAddr)
		fmt.Fprintf(&b, "ip netns exec %s sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1\n", n)
		fmt.Fprintf(&b, "ip route add %s via %s\n", PodCIDR(i), NodeAddr(i))
		fmt.Fprintf(&b, "ip route add %s via %s\n", PodCIDR6(i), NodeAddr6(i))
		for j := 1; j <= c.Nodes; j++ {
			if j != i {
				fmt.Fprintf(&b, "ip -n %s route add %s via %s\n", n, PodCIDR(j), NodeAddr(j))
				fmt.Fprintf(&b, "ip -n %s route add %s via %s\n", n, PodCIDR6(j), NodeAddr6(j))
			}
		}
	}
	if _, err := c.vmSh(ctx, b.String()); err != nil {
		return fmt.Errorf("building the node network: %w", err)
	}
	return nil
}
