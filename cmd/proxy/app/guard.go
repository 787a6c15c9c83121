package app

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/pflag"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/guard"
)

// GuardOptions restrict the addresses Services may have programmed
// (pkg/guard). These flags are this proxy's own: kube-proxy has none of
// them, and a KubeProxyConfiguration file has no field for them.
type GuardOptions struct {
	// ExternalIPAllowedCIDRs is --external-ip-allowed-cidrs: when set,
	// external and load-balancer IPs outside these CIDRs are refused.
	ExternalIPAllowedCIDRs []string
	// ServiceCIDRs is --service-cidr: the cluster's Service ranges, refused
	// as external, load-balancer and endpoint addresses.
	ServiceCIDRs []string
}

// AddFlags registers the flags.
func (g *GuardOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&g.ExternalIPAllowedCIDRs, "external-ip-allowed-cidrs", g.ExternalIPAllowedCIDRs,
		"Comma-separated CIDRs. When set, a Service's external IPs (spec.externalIPs) and load-balancer ingress IPs outside them are not programmed, and a Warning Event on the Service says so. "+
			"Whatever this says, the node's own addresses, pod addresses (--cluster-cidr), Service addresses, loopback, link-local, unspecified and multicast addresses are refused. Empty allows any other address. (kube-ipvs-proxy only, not a kube-proxy flag.)")
	fs.StringSliceVar(&g.ServiceCIDRs, "service-cidr", g.ServiceCIDRs,
		"The cluster's Service CIDRs (kube-apiserver's --service-cluster-ip-range), comma-separated. External IPs, load-balancer IPs and endpoint addresses in them are refused; without it only the ClusterIPs in use are. (kube-ipvs-proxy only, not a kube-proxy flag.)")
}

// Validate checks both flags, naming each.
func (g *GuardOptions) Validate() error {
	_, err := g.Config()
	return err
}

// Config returns the guard configuration of the flags; the proxier adds
// the cluster CIDRs (the node's addresses come with each snapshot).
func (g *GuardOptions) Config() (guard.Config, error) {
	allowed, err1 := parseGuardCIDRs("--external-ip-allowed-cidrs", g.ExternalIPAllowedCIDRs)
	for _, p := range allowed {
		if r, ok := alwaysRefused(p); ok {
			err1 = errors.Join(err1, fmt.Errorf("--external-ip-allowed-cidrs: %s is inside %s, which is always refused", p, r))
		}
	}
	services, err2 := parseGuardCIDRs("--service-cidr", g.ServiceCIDRs)
	if err := errors.Join(err1, err2); err != nil {
		return guard.Config{}, err
	}
	return guard.Config{AllowedCIDRs: allowed, ServiceCIDRs: services}, nil
}

func parseGuardCIDRs(flag string, list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var errs []error
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not a valid CIDR (e.g. 192.0.2.0/24 or 2001:db8::/64)", flag, s))
			continue
		}
		// Addresses are compared unmapped: ::ffff:192.0.2.0/120 is
		// 192.0.2.0/24.
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, errors.Join(errs...)
}

// refusedRanges are refused as external and load-balancer IPs whatever
// the allowlist says; allowing only addresses inside them is a mistake.
var refusedRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/32"), netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("224.0.0.0/4"), netip.MustParsePrefix("ff00::/8"),
}

// alwaysRefused returns the refused range p lies in, if any.
func alwaysRefused(p netip.Prefix) (netip.Prefix, bool) {
	for _, r := range refusedRanges {
		if r.Addr().Is4() == p.Addr().Is4() && r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return r, true
		}
	}
	return netip.Prefix{}, false
}
