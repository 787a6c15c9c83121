package ipvs

// topoMode is how topology hints restrict the cluster endpoints of one
// family of one port.
type topoMode uint8

const (
	// topoNone: every ready endpoint (no hints, or hints not usable here).
	topoNone topoMode = iota
	// topoSameZone: the ready endpoints hinted for this node's zone.
	topoSameZone
	// topoSameNode: the ready endpoints hinted for this node.
	topoSameNode
)

// topologyMode decides from the hints of the ready endpoints of one family,
// exactly as upstream's topologyModeFromHints (k8s.io/kubernetes
// pkg/proxy/topology.go, with PreferSameTrafficDistribution GA and locked
// on since 1.35):
//
//   - no ready endpoint: no topology;
//   - every ready endpoint has a node hint and one is hinted for this node:
//     same node;
//   - otherwise, every ready endpoint has a zone hint and one is hinted for
//     this node's zone: same zone;
//   - otherwise no topology: the hints are ignored, every ready endpoint is
//     used.
//
// Like upstream, the Service's trafficDistribution is not read here: the
// EndpointSlice controller turns it into hints (PreferSameZone and
// PreferClose into zone hints, PreferSameNode into node hints plus zone
// hints, which is the fallback above), and so it does for the
// service.kubernetes.io/topology-mode: Auto annotation, which the proxy
// never sees. Planning from the hints alone keeps both working and agrees
// with upstream when the controller has not caught up with a change yet.
func (p *planner) topologyMode(s *famStats) topoMode {
	switch {
	case s.ready == 0:
		return topoNone
	case !s.missingNodeHint && s.nodeHinted:
		return topoSameNode
	case !s.missingZoneHint && s.zoneHinted:
		return topoSameZone
	}
	return topoNone
}
