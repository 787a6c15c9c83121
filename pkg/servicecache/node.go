package servicecache

import (
	"fmt"

	v1 "k8s.io/api/core/v1"
)

// ConvertNode extracts what the proxy needs of a Node. notes lists the
// addresses and CIDRs dropped as invalid, for logging at V(4).
func ConvertNode(node *v1.Node) (Node, []string) {
	if node == nil {
		return Node{}, nil
	}
	n := Node{Name: node.Name, Zone: node.Labels[v1.LabelTopologyZone]}
	var notes []string
	for _, na := range node.Status.Addresses {
		if na.Type != v1.NodeInternalIP && na.Type != v1.NodeExternalIP {
			continue
		}
		a, err := parseAddr(na.Address)
		if err != nil {
			notes = append(notes, fmt.Sprintf("node %s address dropped: %v", na.Type, err))
			continue
		}
		n.Addresses = append(n.Addresses, a)
	}
	n.Addresses = sortAddrs(n.Addresses)

	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	// Spec order is kept: the first CIDR is the primary family's.
	for _, c := range cidrs {
		p, err := parsePrefix(c)
		if err != nil {
			notes = append(notes, fmt.Sprintf("node podCIDR dropped: %v", err))
			continue
		}
		n.PodCIDRs = append(n.PodCIDRs, p)
	}
	return n, notes
}
