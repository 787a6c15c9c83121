package app

import (
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Local traffic detection modes (--detect-local-mode), as kube-proxy.
const (
	DetectLocalClusterCIDR         = "ClusterCIDR"
	DetectLocalNodeCIDR            = "NodeCIDR"
	DetectLocalBridgeInterface     = "BridgeInterface"
	DetectLocalInterfaceNamePrefix = "InterfaceNamePrefix"
)

// NotLocal returns the iptables matches for traffic that does not come from
// local pods, per family, for the node; nil means the ClusterCIDR mode
// (the planner matches on --cluster-cidr).
func (o *Options) NotLocal(node servicecache.Node) map[iptables.Family][]string {
	both := func(args ...string) map[iptables.Family][]string {
		return map[iptables.Family][]string{iptables.IPv4: args, iptables.IPv6: args}
	}
	switch o.DetectLocalMode {
	case DetectLocalNodeCIDR:
		m := map[iptables.Family][]string{}
		for _, p := range node.PodCIDRs {
			f := iptables.IPv4
			if p.Addr().Is6() {
				f = iptables.IPv6
			}
			if _, seen := m[f]; !seen {
				m[f] = []string{"!", "-s", p.Masked().String()}
			}
		}
		return m
	case DetectLocalBridgeInterface:
		return both("!", "-i", o.PodBridgeInterface)
	case DetectLocalInterfaceNamePrefix:
		return both("!", "-i", o.PodInterfaceNamePrefix+"+")
	}
	return nil
}
