package app

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/sysctl"
)

// ConntrackOptions are kube-proxy's --conntrack-* flags.
type ConntrackOptions struct {
	MaxPerCore            int32         // --conntrack-max-per-core
	Min                   int32         // --conntrack-min
	TCPEstablishedTimeout time.Duration // --conntrack-tcp-timeout-established
	TCPCloseWaitTimeout   time.Duration // --conntrack-tcp-timeout-close-wait
	TCPBeLiberal          bool          // --conntrack-tcp-be-liberal
	UDPTimeout            time.Duration // --conntrack-udp-timeout
	UDPStreamTimeout      time.Duration // --conntrack-udp-timeout-stream
}

// DefaultConntrackOptions are kube-proxy's defaults.
func DefaultConntrackOptions() ConntrackOptions {
	return ConntrackOptions{
		MaxPerCore:            sysctl.DefaultConntrackMaxPerCore,
		Min:                   sysctl.DefaultConntrackMin,
		TCPEstablishedTimeout: sysctl.DefaultConntrackTCPEstablished,
		TCPCloseWaitTimeout:   sysctl.DefaultConntrackTCPCloseWait,
	}
}

// AddFlags registers the flags with kube-proxy's names and help.
func (c *ConntrackOptions) AddFlags(fs *pflag.FlagSet) {
	fs.Int32Var(&c.MaxPerCore, "conntrack-max-per-core", c.MaxPerCore,
		"Maximum number of NAT connections to track per CPU core (0 to leave the limit as-is and ignore conntrack-min).")
	fs.Int32Var(&c.Min, "conntrack-min", c.Min,
		"Minimum number of conntrack entries to allocate, regardless of conntrack-max-per-core (set conntrack-max-per-core=0 to leave the limit as-is).")
	fs.DurationVar(&c.TCPEstablishedTimeout, "conntrack-tcp-timeout-established", c.TCPEstablishedTimeout,
		"Idle timeout for established TCP connections (0 to leave as-is)")
	fs.DurationVar(&c.TCPCloseWaitTimeout, "conntrack-tcp-timeout-close-wait", c.TCPCloseWaitTimeout,
		"NAT timeout for TCP connections in the CLOSE_WAIT state (0 to leave as-is)")
	fs.BoolVar(&c.TCPBeLiberal, "conntrack-tcp-be-liberal", c.TCPBeLiberal,
		"Enable liberal mode for tracking TCP packets by setting nf_conntrack_tcp_be_liberal to 1")
	fs.DurationVar(&c.UDPTimeout, "conntrack-udp-timeout", c.UDPTimeout,
		"Idle timeout for UNREPLIED UDP connections (0 to leave as-is)")
	fs.DurationVar(&c.UDPStreamTimeout, "conntrack-udp-timeout-stream", c.UDPStreamTimeout,
		"Idle timeout for ASSURED UDP connections (0 to leave as-is)")
}

// Sysctl returns the options for sysctl.EnsureConntrackSysctls.
func (c ConntrackOptions) Sysctl(numCPU int) sysctl.ConntrackOptions {
	return sysctl.ConntrackOptions{
		MaxPerCore: c.MaxPerCore, Min: c.Min,
		TCPEstablishedTimeout: c.TCPEstablishedTimeout, TCPCloseWaitTimeout: c.TCPCloseWaitTimeout,
		TCPBeLiberal: c.TCPBeLiberal, UDPTimeout: c.UDPTimeout, UDPStreamTimeout: c.UDPStreamTimeout,
		NumCPU: numCPU,
	}
}
