package kubelet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// netnsDir is where `ip netns add` bind-mounts named namespaces.
const netnsDir = "/run/netns"

// ipCmd runs iproute2 commands. The plumbing is a handful of ip commands
// run once per pod, so the command line is the simplest robust choice and
// reads exactly like the documentation of what is set up.
type ipCmd struct {
	path string // the ip binary
}

func findIP() (ipCmd, error) {
	if p, err := exec.LookPath("ip"); err == nil {
		return ipCmd{path: p}, nil
	}
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return ipCmd{path: p}, nil
		}
	}
	return ipCmd{}, errors.New("the ip command (iproute2) is not installed")
}

func (c ipCmd) run(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.path, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (c ipCmd) output(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.path, args...).Output()
	if err != nil {
		return "", fmt.Errorf("ip %s: %v", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// netnsExists tells whether a named namespace exists.
func netnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// Gateway6 is the pod's IPv6 gateway: a link-local address on the node
// side of every pod veth (as the IPv4 gateway is the pod CIDR's first
// address on every one of them).
var Gateway6 = netip.MustParseAddr("fe80::1")

// podNetwork is one pod's plumbing.
type podNetwork struct {
	NodeNetns string     // the node's namespace, e.g. node1
	Netns     string     // the pod's namespace, p<hex>
	Veth      string     // node-side veth, v<hex>
	IP        netip.Addr // the pod's IPv4 address
	Gateway   netip.Addr // the IPv4 pod CIDR's first address
	IP6       netip.Addr // the pod's IPv6 address; invalid on an IPv4-only node
}

func (n podNetwork) bits() string { return strconv.Itoa(n.IP.BitLen()) }

// IPs are the pod's addresses, IPv4 first.
func (n podNetwork) IPs() []netip.Addr {
	ips := []netip.Addr{n.IP}
	if n.IP6.IsValid() {
		ips = append(ips, n.IP6)
	}
	return ips
}

func (n podNetwork) String() string {
	s := n.IP.String()
	if n.IP6.IsValid() {
		s += "," + n.IP6.String()
	}
	return s
}

// setup builds the pod's namespace and veth. Equivalent commands:
//
//	ip netns add pX
//	ip link add vX netns NODE type veth peer name eth0 netns pX
//	ip -n pX link set lo up
//	ip -n pX addr add IP/32 dev eth0
//	ip -n pX link set eth0 up
//	ip -n pX route add GW dev eth0 scope link
//	ip -n pX route add default via GW dev eth0
//	ip -n NODE addr add GW/32 dev vX
//	ip -n NODE link set vX up
//	ip -n NODE route add IP/32 dev vX
//
// and, with an IPv6 pod address, the same for IPv6 with the link-local
// gateway fe80::1 on the node side:
//
//	ip -n pX addr add IP6/128 dev eth0 nodad
//	ip -6 -n pX route add default via fe80::1 dev eth0
//	ip -n NODE addr add fe80::1/64 dev vX nodad
//	ip -n NODE route add IP6/128 dev vX
//
// nodad: duplicate address detection would keep each address tentative
// (unusable) for a second or more, and these addresses are unique by
// construction. The node side's fe80::1 is also what the node's neighbour
// solicitations towards the pod come from, so it must not be tentative.
//
// Creating both veth ends directly in their namespaces means no transient
// "eth0" ever appears in the kubelet's own namespace. A partial earlier
// attempt is torn down first so setup can simply be retried.
func (c ipCmd) setup(ctx context.Context, n podNetwork) error {
	if !netnsExists(n.NodeNetns) {
		return fmt.Errorf("node network namespace %q does not exist (%s/%s)", n.NodeNetns, netnsDir, n.NodeNetns)
	}
	if netnsExists(n.Netns) {
		if err := c.teardown(ctx, n); err != nil {
			return fmt.Errorf("removing a previous attempt: %w", err)
		}
	}
	ip, gw := n.IP.String(), n.Gateway.String()
	steps := [][]string{
		{"netns", "add", n.Netns},
		{"link", "add", n.Veth, "netns", n.NodeNetns, "type", "veth", "peer", "name", "eth0", "netns", n.Netns},
		{"-n", n.Netns, "link", "set", "lo", "up"},
		{"-n", n.Netns, "addr", "add", ip + "/" + n.bits(), "dev", "eth0"},
		{"-n", n.Netns, "link", "set", "eth0", "up"},
		{"-n", n.Netns, "route", "add", gw, "dev", "eth0", "scope", "link"},
		{"-n", n.Netns, "route", "add", "default", "via", gw, "dev", "eth0"},
		{"-n", n.NodeNetns, "addr", "add", gw + "/" + n.bits(), "dev", n.Veth},
		{"-n", n.NodeNetns, "link", "set", n.Veth, "up"},
		{"-n", n.NodeNetns, "route", "add", ip + "/" + n.bits(), "dev", n.Veth},
	}
	if n.IP6.IsValid() {
		ip6, gw6 := n.IP6.String()+"/128", Gateway6.String()
		steps = append(steps,
			[]string{"-n", n.Netns, "addr", "add", ip6, "dev", "eth0", "nodad"},
			[]string{"-6", "-n", n.Netns, "route", "add", "default", "via", gw6, "dev", "eth0"},
			[]string{"-n", n.NodeNetns, "addr", "add", gw6 + "/64", "dev", n.Veth, "nodad"},
			[]string{"-n", n.NodeNetns, "route", "add", ip6, "dev", n.Veth},
		)
	}
	for _, args := range steps {
		if err := c.run(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// teardown removes the pod's plumbing; missing pieces are fine. Any process
// still inside the pod namespace is killed first: a namespace outlives its
// name while a process holds it, and so would its eth0 and the veth.
// Equivalent commands:
//
//	kill -KILL $(ip netns pids pX)
//	ip -n NODE route del IP/32 dev vX
//	ip -n NODE route del IP6/128 dev vX
//	ip -n NODE link del vX        (removes eth0 in pX too)
//	ip netns del pX
func (c ipCmd) teardown(ctx context.Context, n podNetwork) error {
	var errs []error
	if netnsExists(n.Netns) {
		if err := c.killNetnsPids(ctx, n.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	if netnsExists(n.NodeNetns) && c.linkExists(ctx, n.NodeNetns, n.Veth) {
		if n.IP.IsValid() {
			_ = c.run(ctx, "-n", n.NodeNetns, "route", "del", n.IP.String()+"/"+n.bits(), "dev", n.Veth)
		}
		if n.IP6.IsValid() {
			_ = c.run(ctx, "-n", n.NodeNetns, "route", "del", n.IP6.String()+"/128", "dev", n.Veth)
		}
		if err := c.run(ctx, "-n", n.NodeNetns, "link", "del", n.Veth); err != nil {
			errs = append(errs, err)
		}
	}
	if netnsExists(n.Netns) {
		if err := c.run(ctx, "netns", "del", n.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c ipCmd) linkExists(ctx context.Context, ns, link string) bool {
	return c.run(ctx, "-n", ns, "link", "show", "dev", link) == nil
}

// killNetnsPids SIGKILLs every process in the namespace and waits (briefly)
// until none is left.
func (c ipCmd) killNetnsPids(ctx context.Context, ns string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := c.output(ctx, "netns", "pids", ns)
		if err != nil {
			return err
		}
		pids := strings.Fields(out)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in %s survive SIGKILL", pids, ns)
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// inNetns runs fn on an OS thread switched into the named namespace. fn
// must do its namespace-sensitive work (creating sockets, opening
// /proc/sys/net files) synchronously on the calling goroutine; sockets stay
// in the namespace they were created in after the thread switches back.
func inNetns(name string, fn func() error) error {
	target, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("network namespace %s: %w", name, err)
	}
	defer target.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			// Still in the original namespace, but do not trust the
			// thread: exiting while locked discards it.
			done <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			done <- fmt.Errorf("setns back from %s: %w", name, err)
			return // the thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

// enableForwarding turns on IPv4 (and with ipv6, IPv6) forwarding in the
// node namespace, as the ptp CNI plugin does: pods reach anything beyond
// the node only through it.
func enableForwarding(nodeNetns string, ipv6 bool) error {
	return inNetns(nodeNetns, func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
			return err
		}
		if ipv6 {
			return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1\n"), 0o644)
		}
		return nil
	})
}
