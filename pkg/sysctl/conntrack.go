package sysctl

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// The conntrack sysctls kube-proxy manages in every mode
// (pkg/proxy/conntrack/sysctls.go).
const (
	ConntrackMax                   = "net/netfilter/nf_conntrack_max"
	ConntrackTCPTimeoutEstablished = "net/netfilter/nf_conntrack_tcp_timeout_established"
	ConntrackTCPTimeoutCloseWait   = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	ConntrackTCPBeLiberal          = "net/netfilter/nf_conntrack_tcp_be_liberal"
	ConntrackUDPTimeout            = "net/netfilter/nf_conntrack_udp_timeout"
	ConntrackUDPTimeoutStream      = "net/netfilter/nf_conntrack_udp_timeout_stream"
	DefaultConntrackHashsizePath   = "/sys/module/nf_conntrack/parameters/hashsize"
	conntrackMaxLimit              = 1048576 // upstream caps the scaled maximum here
	DefaultConntrackMaxPerCore     = 32768
	DefaultConntrackMin            = 131072
	DefaultConntrackTCPEstablished = 24 * time.Hour
	DefaultConntrackTCPCloseWait   = time.Hour
)

// ConntrackOptions are kube-proxy's --conntrack-* flags. A zero duration
// leaves the kernel's value.
type ConntrackOptions struct {
	MaxPerCore            int32 // --conntrack-max-per-core; 0 leaves the table size alone
	Min                   int32 // --conntrack-min
	TCPEstablishedTimeout time.Duration
	TCPCloseWaitTimeout   time.Duration
	TCPBeLiberal          bool
	UDPTimeout            time.Duration
	UDPStreamTimeout      time.Duration

	// NumCPU scales MaxPerCore.
	NumCPU int
	// Hashsize is the nf_conntrack module's hashsize parameter
	// (HashsizeFile by default).
	Hashsize IntParam
	// Logger receives what changed; klog.Background() if unset.
	Logger logr.Logger
}

// IntParam is one integer kernel parameter outside /proc/sys.
type IntParam interface {
	Get() (int, error)
	Set(int) error
}

// HashsizeFile is the nf_conntrack hashsize module parameter.
type HashsizeFile string

func (f HashsizeFile) Get() (int, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Set is `echo N > /sys/module/nf_conntrack/parameters/hashsize`.
func (f HashsizeFile) Set(v int) error {
	return os.WriteFile(string(f), []byte(strconv.Itoa(v)), 0o640)
}

// ConntrackMaxFor is the table size kube-proxy asks for: MaxPerCore times
// the CPUs, at least Min, at most 1048576; 0 when MaxPerCore is 0.
func ConntrackMaxFor(o ConntrackOptions) int {
	if o.MaxPerCore <= 0 {
		return 0
	}
	n := o.NumCPU
	if n <= 0 {
		n = 1
	}
	scaled := int(o.MaxPerCore) * n
	switch {
	case scaled > conntrackMaxLimit:
		return conntrackMaxLimit
	case scaled > int(o.Min):
		return scaled
	default:
		return int(o.Min)
	}
}

// EnsureConntrackSysctls sets the conntrack parameters as kube-proxy does:
// it raises (never lowers) the table size and its hash size, and sets the
// TCP and UDP timeouts that are not zero.
//
// The table size and hash size are global to the host: from a network
// namespace other than the host's, or with a read-only /sys, the kernel
// refuses them. kube-proxy then fails to start; this proxy logs the
// refusal and goes on, as Services work without the larger table. A
// timeout the kernel refuses is an error.
func EnsureConntrackSysctls(s Sysctl, o ConntrackOptions) error {
	if s == nil {
		return errors.New("ensure conntrack sysctls: nil Sysctl")
	}
	logger := o.Logger
	if logger.GetSink() == nil {
		logger = klog.Background()
	}
	if max := ConntrackMaxFor(o); max > 0 {
		if err := ensureConntrackSize(s, o.Hashsize, max, logger); err != nil {
			logger.Info("Could not raise the conntrack table size; leaving it as it is (from a network namespace other than the host's the kernel refuses it)",
				"want", max, "err", err.Error())
		}
	}
	type timeout struct {
		name string
		d    time.Duration
	}
	for _, t := range []timeout{
		// sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=86400
		{ConntrackTCPTimeoutEstablished, o.TCPEstablishedTimeout},
		// sysctl -w net.netfilter.nf_conntrack_tcp_timeout_close_wait=3600
		{ConntrackTCPTimeoutCloseWait, o.TCPCloseWaitTimeout},
		// sysctl -w net.netfilter.nf_conntrack_udp_timeout=N
		{ConntrackUDPTimeout, o.UDPTimeout},
		// sysctl -w net.netfilter.nf_conntrack_udp_timeout_stream=N
		{ConntrackUDPTimeoutStream, o.UDPStreamTimeout},
	} {
		if t.d <= 0 {
			continue
		}
		if err := ensure(s, logger, t.name, int(t.d/time.Second)); err != nil {
			return fmt.Errorf("conntrack: %w", conntrackHint(err))
		}
	}
	if o.TCPBeLiberal {
		// sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1
		if err := ensure(s, logger, ConntrackTCPBeLiberal, 1); err != nil {
			return fmt.Errorf("conntrack: %w", conntrackHint(err))
		}
	}
	return nil
}

// ensureConntrackSize raises nf_conntrack_max to max and the hash size to
// max/4, each only if smaller.
func ensureConntrackSize(s Sysctl, hashsize IntParam, max int, logger logr.Logger) error {
	// sysctl -w net.netfilter.nf_conntrack_max=MAX
	if cur, err := s.Get(ConntrackMax); err != nil || cur < max {
		if err := s.Set(ConntrackMax, max); err != nil {
			return fmt.Errorf("setting %s to %d: %w", ConntrackMax, max, conntrackHint(err))
		}
		logger.Info("Set sysctl", "name", ConntrackMax, "value", max)
	}
	if hashsize == nil {
		hashsize = HashsizeFile(DefaultConntrackHashsizePath)
	}
	cur, err := hashsize.Get()
	if err != nil {
		return fmt.Errorf("reading the conntrack hashsize: %w", err)
	}
	if cur < max/4 {
		if err := hashsize.Set(max / 4); err != nil {
			return fmt.Errorf("setting the conntrack hashsize to %d: %w", max/4, err)
		}
		logger.Info("Set conntrack hashsize", "value", max/4)
	}
	return nil
}

// conntrackHint adds the likely cause to a missing conntrack sysctl.
func conntrackHint(err error) error {
	var nf *NotFoundError
	if errors.As(err, &nf) {
		return fmt.Errorf("%w (is the nf_conntrack kernel module loaded? try `modprobe nf_conntrack`)", err)
	}
	return err
}
