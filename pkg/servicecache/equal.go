package servicecache

import (
	"maps"
	"slices"
)

// Equal reports whether s and o would program the same rules. The Cache
// uses it to keep the previous *Service (and leave the key out of
// Snapshot.Changed) when an event changed nothing the proxy reads.
func (s *Service) Equal(o *Service) bool {
	if s == o {
		return true
	}
	if s == nil || o == nil {
		return false
	}
	return s.Key == o.Key &&
		s.UID == o.UID &&
		s.Type == o.Type &&
		s.Created.Equal(o.Created) &&
		s.SourceRangesRequested == o.SourceRangesRequested &&
		slices.Equal(s.ClusterIPs, o.ClusterIPs) &&
		slices.Equal(s.ExternalIPs, o.ExternalIPs) &&
		slices.Equal(s.LoadBalancerIPs, o.LoadBalancerIPs) &&
		slices.Equal(s.LoadBalancerSourceRanges, o.LoadBalancerSourceRanges) &&
		s.AffinityTimeoutSeconds == o.AffinityTimeoutSeconds &&
		s.ExternalPolicyLocal == o.ExternalPolicyLocal &&
		s.InternalPolicyLocal == o.InternalPolicyLocal &&
		s.HealthCheckNodePort == o.HealthCheckNodePort &&
		s.TrafficDistribution == o.TrafficDistribution &&
		maps.Equal(s.Annotations, o.Annotations) &&
		slices.EqualFunc(s.Ports, o.Ports, ServicePort.Equal)
}

// Equal compares two ports including their endpoints.
func (p ServicePort) Equal(o ServicePort) bool {
	return p.Name == o.Name && p.Protocol == o.Protocol && p.Port == o.Port &&
		p.NodePort == o.NodePort && slices.EqualFunc(p.Endpoints, o.Endpoints, Endpoint.Equal)
}

// Equal compares two endpoints field by field (nil and empty hints are
// equal).
func (e Endpoint) Equal(o Endpoint) bool {
	return e.Addr == o.Addr && e.Port == o.Port &&
		e.Ready == o.Ready && e.Serving == o.Serving && e.Terminating == o.Terminating &&
		e.NodeName == o.NodeName && e.Zone == o.Zone &&
		slices.Equal(e.ZoneHints, o.ZoneHints) && slices.Equal(e.NodeHints, o.NodeHints)
}

// Equal compares two Nodes.
func (n Node) Equal(o Node) bool {
	return n.Name == o.Name && n.Zone == o.Zone &&
		slices.Equal(n.Addresses, o.Addresses) && slices.Equal(n.PodCIDRs, o.PodCIDRs)
}
