package sysctl

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// The sysctls kube-proxy's IPVS mode manages (pkg/proxy/ipvs/proxier.go).
const (
	VSConnTrack           = "net/ipv4/vs/conntrack"
	VSConnReuseMode       = "net/ipv4/vs/conn_reuse_mode"
	VSExpireNoDestConn    = "net/ipv4/vs/expire_nodest_conn"
	VSExpireQuiescentTmpl = "net/ipv4/vs/expire_quiescent_template"
	IPForward             = "net/ipv4/ip_forward"
	ARPIgnore             = "net/ipv4/conf/all/arp_ignore"
	ARPAnnounce           = "net/ipv4/conf/all/arp_announce"
	BridgeNFCallIPTables  = "net/bridge/bridge-nf-call-iptables"
)

// Kernel versions that decide conn_reuse_mode, as upstream's
// pkg/util/kernel: the sysctl exists from 4.1, and from 5.9 the kernel's
// default (1) no longer drops packets of reused connections to removed
// backends (kubernetes#93297), so it is left alone.
var (
	connReuseMinKernel   = KernelVersion{Major: 4, Minor: 1}
	connReuseFixedKernel = KernelVersion{Major: 5, Minor: 9}
)

// IPVSOptions configure EnsureIPVSSysctls.
type IPVSOptions struct {
	// StrictARP also sets arp_ignore=1 and arp_announce=2 so the node does
	// not answer ARP for service IPs on the dummy interface
	// (--ipvs-strict-arp; needed e.g. by MetalLB in L2 mode).
	StrictARP bool
	// KernelRelease is the running kernel (`uname -r`). If empty it is read
	// from s when s has a KernelRelease method (Proc and Fake do);
	// otherwise EnsureIPVSSysctls fails, as kube-proxy does when it cannot
	// learn the kernel version.
	KernelRelease string
	// Logger receives what changed; klog.Background() if unset.
	Logger logr.Logger
}

// kernelReleaser is implemented by Proc and Fake.
type kernelReleaser interface {
	KernelRelease() (string, error)
}

// EnsureIPVSSysctls sets the kernel parameters kube-proxy's IPVS mode sets,
// in the same order, writing only those that differ. It returns the first
// failure; a sysctl that does not exist is reported by name and path.
func EnsureIPVSSysctls(s Sysctl, opts IPVSOptions) error {
	if s == nil {
		return errors.New("ensure IPVS sysctls: nil Sysctl")
	}
	logger := opts.Logger
	if logger.GetSink() == nil {
		logger = klog.Background()
	}

	// sysctl -w net.ipv4.vs.conntrack=1
	// IPVS keeps conntrack entries for its connections so iptables can
	// masquerade them.
	if err := ensure(s, logger, VSConnTrack, 1); err != nil {
		return err
	}

	release := opts.KernelRelease
	if release == "" {
		kr, ok := s.(kernelReleaser)
		if !ok {
			return errors.New("ensure IPVS sysctls: kernel release unknown: set IPVSOptions.KernelRelease")
		}
		r, err := kr.KernelRelease()
		if err != nil {
			return fmt.Errorf("ensure IPVS sysctls: kernel release: %w", err)
		}
		release = r
	}
	kv, err := ParseKernelVersion(release)
	if err != nil {
		return fmt.Errorf("ensure IPVS sysctls: %w", err)
	}
	switch {
	case kv.Less(connReuseMinKernel):
		// Upstream only logs here: the proxy still works, minus the fix.
		logger.Error(nil, "Can't set sysctl, kernel version doesn't satisfy minimum version requirements",
			"sysctl", VSConnReuseMode, "kernelVersion", kv.String(), "minimumKernelVersion", connReuseMinKernel.String())
	case !kv.Less(connReuseFixedKernel):
		// The kernel handles reused connections itself; mode 0 would only
		// cost performance.
		logger.V(2).Info("Left as-is", "sysctl", VSConnReuseMode)
	default:
		// sysctl -w net.ipv4.vs.conn_reuse_mode=0
		// On kernels 4.1-5.8 mode 1 drops the SYN of a reused source port
		// to a removed backend, stalling clients for a second.
		if err := ensure(s, logger, VSConnReuseMode, 0); err != nil {
			return err
		}
	}

	// sysctl -w net.ipv4.vs.expire_nodest_conn=1
	// Drop connections to removed backends at once instead of letting
	// them time out.
	if err := ensure(s, logger, VSExpireNoDestConn, 1); err != nil {
		return err
	}

	// sysctl -w net.ipv4.vs.expire_quiescent_template=1
	// Expire persistence (session affinity) templates of weight-0
	// backends so new connections go to live ones.
	if err := ensure(s, logger, VSExpireQuiescentTmpl, 1); err != nil {
		return err
	}

	// sysctl -w net.ipv4.ip_forward=1
	// Service traffic to pods on other nodes is routed through this node.
	if err := ensure(s, logger, IPForward, 1); err != nil {
		return err
	}

	if opts.StrictARP {
		// sysctl -w net.ipv4.conf.all.arp_ignore=1
		// Answer ARP only for addresses on the receiving interface, not
		// for service IPs on the dummy interface.
		if err := ensure(s, logger, ARPIgnore, 1); err != nil {
			return err
		}
		// sysctl -w net.ipv4.conf.all.arp_announce=2
		// Use the outgoing interface's address as ARP source, never a
		// service IP.
		if err := ensure(s, logger, ARPAnnounce, 2); err != nil {
			return err
		}
	}

	// net.bridge.bridge-nf-call-iptables is only checked, never set: the
	// proxy does not own bridge settings, kube-proxy v1.37 does not touch
	// it, and older releases only warned. It matters only when pods sit on a
	// Linux bridge, and exists only when br_netfilter is loaded.
	if v, err := s.Get(BridgeNFCallIPTables); err == nil && v != 1 {
		logger.Info("Missing br-netfilter module or unset sysctl br-nf-call-iptables, proxy may not work as intended",
			"sysctl", BridgeNFCallIPTables, "value", v)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("ensure IPVS sysctls: %w", err)
	}
	return nil
}

// ensure sets name to want if it holds something else.
func ensure(s Sysctl, logger logr.Logger, name string, want int) error {
	got, err := s.Get(name)
	if err != nil {
		return explain(err)
	}
	if got == want {
		return nil
	}
	if err := s.Set(name, want); err != nil {
		return fmt.Errorf("can't set sysctl %s to %d: %w", name, want, explain(err))
	}
	logger.Info("Changed sysctl", "name", name, "before", got, "after", want)
	return nil
}

// explain adds the likely cause to a missing sysctl.
func explain(err error) error {
	var nf *NotFoundError
	if !errors.As(err, &nf) {
		return err
	}
	if strings.HasPrefix(nf.Name, "net/ipv4/vs/") {
		return fmt.Errorf("%w (is the ip_vs kernel module loaded? try `modprobe ip_vs`)", err)
	}
	return err
}

// KernelVersion is a kernel's major.minor version.
type KernelVersion struct {
	Major, Minor int
}

// ParseKernelVersion parses the leading major.minor of a kernel release
// such as "5.15.0-91-generic" or "6.1.55+".
func ParseKernelVersion(release string) (KernelVersion, error) {
	fields := strings.SplitN(strings.TrimSpace(release), ".", 3)
	if len(fields) < 2 {
		return KernelVersion{}, fmt.Errorf("kernel release %q: want major.minor[...]", release)
	}
	major, err := strconv.Atoi(fields[0])
	if err != nil {
		return KernelVersion{}, fmt.Errorf("kernel release %q: bad major version: %w", release, err)
	}
	minor, err := strconv.Atoi(leadingDigits(fields[1]))
	if err != nil {
		return KernelVersion{}, fmt.Errorf("kernel release %q: bad minor version: %w", release, err)
	}
	return KernelVersion{Major: major, Minor: minor}, nil
}

// leadingDigits returns s up to its first non-digit ("15-rc1" -> "15").
func leadingDigits(s string) string {
	for i, r := range s {
		if r < '0' || r > '9' {
			return s[:i]
		}
	}
	return s
}

// Less reports whether v is older than o.
func (v KernelVersion) Less(o KernelVersion) bool {
	if v.Major != o.Major {
		return v.Major < o.Major
	}
	return v.Minor < o.Minor
}

func (v KernelVersion) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }
