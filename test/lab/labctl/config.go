// Package labctl brings the lab up and down and drives it: a control plane
// (etcd, kube-apiserver, kube-controller-manager, a tiny scheduler) on host
// loopback, and a VM with a real kernel in which each node is a network
// namespace running a lab kubelet and the proxy under test.
package labctl

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Fixed addressing inside the VM. None of these addresses leaves the VM.
//
// The lab is dual-stack, IPv4 first everywhere (the primary family). The
// IPv6 addresses are unique-local (fd00::/8, RFC 4193) and mirror the IPv4
// ones:
//
//	                 IPv4                 IPv6
//	node network     172.30.0.0/24        fd00:172:30::/64
//	bridge (VM)      172.30.0.1           fd00:172:30::1
//	node N           172.30.0.1N          fd00:172:30::1N
//	cluster CIDR     10.244.0.0/16        fd00:10:244::/56
//	node N's pods    10.244.N.0/24        fd00:10:244:N::/64
//	pod gateway      10.244.N.1           fe80::1 (link-local, on every pod veth)
//	Services         10.96.0.0/16         fd00:10:96::/112
const (
	APIServerGuestAddr = "10.0.2.100" // qemu guestfwd to the host's API server
	GuestAddr          = "10.0.2.15"
	BridgeAddr         = "172.30.0.1"
	NodeNet            = "172.30.0.0/24"
	ClusterCIDR        = "10.244.0.0/16"
	ServiceCIDR        = "10.96.0.0/16"
	BridgeAddr6        = "fd00:172:30::1"
	NodeNet6           = "fd00:172:30::/64"
	ClusterCIDR6       = "fd00:10:244::/56"
	ServiceCIDR6       = "fd00:10:96::/112"
	// ClusterCIDRs and ServiceCIDRs are the flag values (kube-proxy's
	// --cluster-cidr, kube-apiserver's --service-cluster-ip-range).
	ClusterCIDRs   = ClusterCIDR + "," + ClusterCIDR6
	ServiceCIDRs   = ServiceCIDR + "," + ServiceCIDR6
	guestAgentPort = 7000
	guestBinDir    = "/run/lab/bin"
	guestStateDir  = "/run/lab"
)

// Config is the lab's configuration, saved in the state dir by `lab up` so
// that later commands find the same lab.
type Config struct {
	Repo      string   `json:"repo"`      // the repository (binaries in _output/bin)
	StateDir  string   `json:"stateDir"`  // host state, removed by `lab down`
	Cache     string   `json:"cache"`     // kernel and upstream binaries, kept
	Nodes     int      `json:"nodes"`     // number of node namespaces
	Proxy     string   `json:"proxy"`     // "upstream" or "ours"
	ProxyArgs []string `json:"proxyArgs"` // extra flags for the proxy
	APIPort   int      `json:"apiPort"`
	EtcdPort  int      `json:"etcdPort"`
	AgentPort int      `json:"agentPort"` // host port forwarded to the guest agent
	MemoryMiB int      `json:"memoryMiB"`
}

// DefaultConfig reads the environment: LAB_DIR, LAB_CACHE, LAB_NODES, PROXY,
// PROXY_ARGS, LAB_API_PORT, LAB_ETCD_PORT, LAB_AGENT_PORT, LAB_REPO.
func DefaultConfig() (Config, error) {
	c := Config{
		StateDir:  env("LAB_DIR", "/var/tmp/kube-ipvs-proxy-lab"),
		Cache:     env("LAB_CACHE", "/var/cache/kube-ipvs-proxy-lab"),
		Proxy:     env("PROXY", "ours"),
		ProxyArgs: strings.Fields(os.Getenv("PROXY_ARGS")),
		MemoryMiB: 3072,
	}
	var err error
	if c.Nodes, err = envInt("LAB_NODES", 2); err != nil {
		return c, err
	}
	if c.APIPort, err = envInt("LAB_API_PORT", 16443); err != nil {
		return c, err
	}
	if c.EtcdPort, err = envInt("LAB_ETCD_PORT", 12379); err != nil {
		return c, err
	}
	if c.AgentPort, err = envInt("LAB_AGENT_PORT", 17000); err != nil {
		return c, err
	}
	if c.Repo, err = findRepo(); err != nil {
		return c, err
	}
	switch c.Proxy {
	case "upstream", "ours":
	default:
		return c, fmt.Errorf("PROXY=%q: want upstream or ours", c.Proxy)
	}
	if c.Nodes < 1 || c.Nodes > 9 {
		return c, fmt.Errorf("LAB_NODES=%d: want 1..9", c.Nodes)
	}
	return c, nil
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envInt(k string, def int) (int, error) {
	v := os.Getenv(k)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %v", k, v, err)
	}
	return n, nil
}

// findRepo locates the repository: LAB_REPO, else the nearest parent of the
// working directory or of the executable that holds test/lab.
func findRepo() (string, error) {
	if r := os.Getenv("LAB_REPO"); r != "" {
		return filepath.Abs(r)
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "test", "lab", "vm", "guest-init.sh")); err == nil {
				return d, nil
			}
			if d == filepath.Dir(d) {
				break
			}
		}
	}
	return "", fmt.Errorf("cannot find the repository (set LAB_REPO)")
}

// Load returns the configuration of the running lab, or an error saying
// that no lab is up.
func Load() (Config, error) {
	def, err := DefaultConfig()
	if err != nil {
		return def, err
	}
	buf, err := os.ReadFile(filepath.Join(def.StateDir, "lab.json"))
	if err != nil {
		return def, fmt.Errorf("no lab is up in %s (run `lab up`): %w", def.StateDir, err)
	}
	var c Config
	if err := json.Unmarshal(buf, &c); err != nil {
		return def, fmt.Errorf("reading %s/lab.json: %w", def.StateDir, err)
	}
	return c, nil
}

func (c Config) save() error {
	buf, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.StateDir, "lab.json"), buf, 0o644)
}

// Paths.
func (c Config) ourBin(name string) string  { return filepath.Join(c.Repo, "_output", "bin", name) }
func (c Config) toolBin(name string) string { return filepath.Join(c.Cache, "bin", name) }
func (c Config) path(elem ...string) string {
	return filepath.Join(append([]string{c.StateDir}, elem...)...)
}

// Kubeconfig is the host's admin kubeconfig.
func (c Config) Kubeconfig() string { return c.path("kubeconfig") }

// KubectlPath is the upstream kubectl built for the lab.
func (c Config) KubectlPath() string { return c.toolBin("kubectl") }

// NodeName of node i (1-based).
func NodeName(i int) string { return fmt.Sprintf("node%d", i) }

// NodeAddr is node i's address on the VM bridge.
func NodeAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{172, 30, 0, byte(10 + i)}) }

// NodeAddr6 is node i's IPv6 address on the VM bridge, fd00:172:30::1i.
func NodeAddr6(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:172:30::%d", 10+i))
}

// PodCIDR of node i.
func PodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
}

// PodCIDR6 is node i's IPv6 pod CIDR, fd00:10:244:i::/64.
func PodCIDR6(i int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%d::/64", i))
}

// NodeAddrs are node i's addresses, IPv4 first.
func NodeAddrs(i int) []netip.Addr { return []netip.Addr{NodeAddr(i), NodeAddr6(i)} }

// PodCIDRs are node i's pod CIDRs, IPv4 first (the Node's spec.podCIDRs).
func PodCIDRs(i int) []netip.Prefix { return []netip.Prefix{PodCIDR(i), PodCIDR6(i)} }

// NodeNames lists the lab's nodes.
func (c Config) NodeNames() []string {
	names := make([]string, c.Nodes)
	for i := range names {
		names[i] = NodeName(i + 1)
	}
	return names
}

// nodeIndex parses "nodeN".
func (c Config) nodeIndex(name string) (int, error) {
	for i := 1; i <= c.Nodes; i++ {
		if NodeName(i) == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown node %q (the lab has %s)", name, strings.Join(c.NodeNames(), ", "))
}
