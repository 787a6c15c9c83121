package servicecache

import (
	"fmt"
	"slices"

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
	// InternalIPs, then ExternalIPs, each in status order, as upstream's
	// GetNodeHostIPs: the first of each family is the node's primary IP
	// (PrimaryIPs), so the order is the Node's, never sorted.
	for _, typ := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, na := range node.Status.Addresses {
			if na.Type != typ {
				continue
			}
			a, err := parseAddr(na.Address)
			if err != nil {
				notes = append(notes, fmt.Sprintf("node %s address dropped: %v", na.Type, err))
				continue
			}
			if !slices.Contains(n.Addresses, a) {
				n.Addresses = append(n.Addresses, a)
			}
		}
	}

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
