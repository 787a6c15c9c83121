package servicecache

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// BuildService is ConvertService followed by MergeEndpointSlices.
func BuildService(svc *v1.Service, eps []*discovery.EndpointSlice) (out *Service, skip string, notes []string) {
	out, skip, notes = ConvertService(svc)
	if out == nil {
		return nil, skip, notes
	}
	out, more := MergeEndpointSlices(out, eps)
	return out, "", append(notes, more...)
}

// MergeEndpointSlices returns a copy of svc whose ports carry the endpoints
// of eps; svc and eps are not modified. Slices that do not belong to svc
// (namespace or kubernetes.io/service-name label) or have addressType FQDN
// are ignored. The result does not depend on the order of eps.
//
// When several slices hold the same (address, port), as happens while an
// endpoint moves between slices or when a terminating pod's IP is reused,
// the ready one wins, then the serving one, then a non-terminating one;
// remaining ties go to the slice whose name sorts first.
func MergeEndpointSlices(svc *Service, eps []*discovery.EndpointSlice) (*Service, []string) {
	if svc == nil {
		return nil, nil
	}
	out := *svc
	out.Ports = slices.Clone(svc.Ports)
	for i := range out.Ports {
		out.Ports[i].Endpoints = nil
	}
	portIdx := make(map[portID]int, len(out.Ports))
	for i, p := range out.Ports {
		portIdx[portID{p.Name, p.Protocol}] = i
	}
	fams := familiesOf(svc.ClusterIPs)

	sorted := slices.DeleteFunc(slices.Clone(eps), func(s *discovery.EndpointSlice) bool { return s == nil })
	slices.SortFunc(sorted, func(a, b *discovery.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })

	type epKey struct {
		addr netip.Addr
		port uint16
	}
	// seen[port index][addr:port] = index into out.Ports[i].Endpoints
	seen := make([]map[epKey]int, len(out.Ports))
	var notes []string
	for _, slice := range sorted {
		if slice.Namespace != svc.Key.Namespace || slice.Labels[discovery.LabelServiceName] != svc.Key.Name {
			notes = append(notes, fmt.Sprintf("EndpointSlice %s/%s ignored: does not belong to the Service", slice.Namespace, slice.Name))
			continue
		}
		if slice.AddressType == discovery.AddressTypeFQDN {
			notes = append(notes, fmt.Sprintf("EndpointSlice %s ignored: addressType FQDN", slice.Name))
			continue
		}
		var base []Endpoint
		base, notes = sliceEndpoints(slice, fams, notes)
		if len(base) == 0 {
			continue
		}
		for _, sp := range slice.Ports {
			if sp.Name == nil {
				// As upstream: a port without a name cannot be matched.
				notes = append(notes, fmt.Sprintf("EndpointSlice %s: port with nil name ignored", slice.Name))
				continue
			}
			if sp.Port == nil || *sp.Port <= 0 || *sp.Port > 65535 {
				notes = append(notes, fmt.Sprintf("EndpointSlice %s: port %q ignored: no valid port number", slice.Name, *sp.Name))
				continue
			}
			id := portID{name: *sp.Name, proto: v1.ProtocolTCP}
			if sp.Protocol != nil && *sp.Protocol != "" {
				id.proto = *sp.Protocol
			}
			pi, ok := portIdx[id]
			if !ok {
				notes = append(notes, fmt.Sprintf("EndpointSlice %s: port %s ignored: the Service has no such port", slice.Name, id))
				continue
			}
			if seen[pi] == nil {
				seen[pi] = map[epKey]int{}
			}
			port := uint16(*sp.Port)
			for _, ep := range base {
				ep.Port = port
				k := epKey{ep.Addr, port}
				if j, dup := seen[pi][k]; dup {
					if rank(&ep) > rank(&out.Ports[pi].Endpoints[j]) {
						out.Ports[pi].Endpoints[j] = ep
					}
					continue
				}
				seen[pi][k] = len(out.Ports[pi].Endpoints)
				out.Ports[pi].Endpoints = append(out.Ports[pi].Endpoints, ep)
			}
		}
	}
	for i := range out.Ports {
		slices.SortFunc(out.Ports[i].Endpoints, func(a, b Endpoint) int {
			if c := a.Addr.Compare(b.Addr); c != 0 {
				return c
			}
			return cmp.Compare(a.Port, b.Port)
		})
	}
	return &out, notes
}

// rank orders duplicates: ready beats serving beats not terminating.
func rank(e *Endpoint) int {
	r := 0
	if e.Ready {
		r += 4
	}
	if e.Serving {
		r += 2
	}
	if !e.Terminating {
		r++
	}
	return r
}

// sliceEndpoints converts the endpoints of one slice (without port), once
// for all of its ports.
func sliceEndpoints(slice *discovery.EndpointSlice, fams ipFamilies, notes []string) ([]Endpoint, []string) {
	out := make([]Endpoint, 0, len(slice.Endpoints))
	for i := range slice.Endpoints {
		e := &slice.Endpoints[i]
		if len(e.Addresses) == 0 {
			notes = append(notes, fmt.Sprintf("EndpointSlice %s: endpoint %d ignored: no address", slice.Name, i))
			continue
		}
		// As upstream, only the first address is used: the others are
		// alternative addresses of the same backend.
		a, err := parseAddr(e.Addresses[0])
		if err != nil {
			notes = append(notes, fmt.Sprintf("EndpointSlice %s: endpoint ignored: %v", slice.Name, err))
			continue
		}
		if !fams.has(a) {
			notes = append(notes, fmt.Sprintf("EndpointSlice %s: endpoint %s ignored: the Service has no %s cluster IP", slice.Name, a, familyName(a)))
			continue
		}
		c := e.Conditions
		ep := Endpoint{
			Addr:  a,
			Ready: c.Ready == nil || *c.Ready,
			// A missing serving condition reads as true, as upstream's
			// endpointslicecache does: a terminating endpoint whose slice
			// omits it keeps the serving-terminating fallback.
			Serving:     c.Serving == nil || *c.Serving,
			Terminating: c.Terminating != nil && *c.Terminating,
		}
		if e.NodeName != nil {
			ep.NodeName = *e.NodeName
		}
		if e.Zone != nil {
			ep.Zone = *e.Zone
		}
		if h := e.Hints; h != nil {
			zones := make([]string, len(h.ForZones))
			for j, z := range h.ForZones {
				zones[j] = z.Name
			}
			nodes := make([]string, len(h.ForNodes))
			for j, n := range h.ForNodes {
				nodes[j] = n.Name
			}
			ep.ZoneHints, ep.NodeHints = sortedSet(zones), sortedSet(nodes)
		}
		out = append(out, ep)
	}
	return out, notes
}
