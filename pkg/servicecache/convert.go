package servicecache

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
)

const (
	// LabelServiceProxyName marks a Service as handled by another proxy;
	// like kube-proxy we skip such Services whatever the label's value.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// AnnotationPrefix selects the Service annotations copied into
	// Service.Annotations.
	AnnotationPrefix = "ipvs.kube-ipvs-proxy.io/"
)

// Skip reasons returned by ConvertService. Reasons about clusterIPs that are
// all invalid carry the offending values and therefore are not constants.
const (
	SkipNil          = "nil Service"
	SkipProxyName    = "label " + LabelServiceProxyName + " is set: proxied by another proxy"
	SkipExternalName = "type ExternalName: served by DNS"
	SkipHeadless     = "headless (clusterIP None): served by DNS"
	SkipNoClusterIP  = "no cluster IP"
)

// ConvertService converts svc to a *Service without endpoints (see
// MergeEndpointSlices). When svc is not proxied it returns nil and a
// non-empty skip reason. notes lists the parts of svc that were dropped (an
// invalid IP, port 0, an external or load-balancer IP of a family without a
// cluster IP, ...) and why, for logging at V(4). svc is not modified.
func ConvertService(svc *v1.Service) (out *Service, skip string, notes []string) {
	if svc == nil {
		return nil, SkipNil, nil
	}
	if _, ok := svc.Labels[LabelServiceProxyName]; ok {
		return nil, SkipProxyName, nil
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil, SkipExternalName, nil
	}
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	if len(raw) == 0 {
		return nil, SkipNoClusterIP, nil
	}
	if raw[0] == v1.ClusterIPNone || svc.Spec.ClusterIP == v1.ClusterIPNone {
		return nil, SkipHeadless, nil
	}

	s := &Service{
		Key:     ServiceKey{Namespace: svc.Namespace, Name: svc.Name},
		UID:     svc.UID,
		Type:    svc.Spec.Type,
		Created: svc.CreationTimestamp.Time,
	}
	var fams ipFamilies
	for _, str := range raw {
		a, err := parseAddr(str)
		if err != nil {
			notes = append(notes, fmt.Sprintf("clusterIP dropped: %v", err))
			continue
		}
		// Only one cluster IP per family is meaningful (kube-proxy takes the
		// first of each family).
		if fams.has(a) {
			notes = append(notes, fmt.Sprintf("clusterIP %s dropped: second %s cluster IP", a, familyName(a)))
			continue
		}
		fams.add(a)
		s.ClusterIPs = append(s.ClusterIPs, a)
	}
	if len(s.ClusterIPs) == 0 {
		return nil, fmt.Sprintf("no valid cluster IP in %q", raw), notes
	}

	notes = convertPorts(svc, s, notes)
	notes = convertExternal(svc, s, fams, notes)
	notes = convertPolicies(svc, s, notes)

	for k, v := range svc.Annotations {
		if strings.HasPrefix(k, AnnotationPrefix) {
			if s.Annotations == nil {
				s.Annotations = map[string]string{}
			}
			s.Annotations[k] = v
		}
	}
	return s, "", notes
}

type portID struct {
	name  string
	proto v1.Protocol
}

func (p portID) String() string { return fmt.Sprintf("%q/%s", p.name, p.proto) }

func convertPorts(svc *v1.Service, s *Service, notes []string) []string {
	withNodePort := svc.Spec.Type == v1.ServiceTypeNodePort || svc.Spec.Type == v1.ServiceTypeLoadBalancer
	seen := map[portID]bool{}
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		id := portID{p.Name, p.Protocol}
		if id.proto == "" {
			id.proto = v1.ProtocolTCP
		}
		if p.Port <= 0 || p.Port > 65535 {
			notes = append(notes, fmt.Sprintf("port %s ignored: port number %d is not in 1-65535", id, p.Port))
			continue
		}
		if seen[id] {
			notes = append(notes, fmt.Sprintf("port %s ignored: duplicate name and protocol", id))
			continue
		}
		seen[id] = true
		sp := ServicePort{Name: p.Name, Protocol: id.proto, Port: uint16(p.Port)}
		if withNodePort && p.NodePort != 0 {
			if p.NodePort < 0 || p.NodePort > 65535 {
				notes = append(notes, fmt.Sprintf("port %s: nodePort %d ignored: not in 1-65535", id, p.NodePort))
			} else {
				sp.NodePort = uint16(p.NodePort)
			}
		}
		s.Ports = append(s.Ports, sp)
	}
	slices.SortFunc(s.Ports, func(a, b ServicePort) int {
		if c := cmp.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return cmp.Compare(a.Protocol, b.Protocol)
	})
	return notes
}

// convertExternal fills ExternalIPs, LoadBalancerIPs and
// LoadBalancerSourceRanges. External and load-balancer IPs of a family the
// Service has no cluster IP of are dropped: kube-proxy (one proxier per
// family) never binds them, and they would have no endpoints.
func convertExternal(svc *v1.Service, s *Service, fams ipFamilies, notes []string) []string {
	for _, str := range svc.Spec.ExternalIPs {
		a, err := parseAddr(str)
		if err != nil {
			notes = append(notes, fmt.Sprintf("externalIP dropped: %v", err))
			continue
		}
		if !fams.has(a) {
			notes = append(notes, fmt.Sprintf("externalIP %s dropped: no %s cluster IP", a, familyName(a)))
			continue
		}
		s.ExternalIPs = append(s.ExternalIPs, a)
	}
	s.ExternalIPs = sortAddrs(s.ExternalIPs)

	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" {
			continue // hostname-only ingress: nothing to bind
		}
		if ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP {
			// The load balancer proxies to the nodes itself; binding its
			// IP locally would short-circuit it.
			notes = append(notes, fmt.Sprintf("load balancer IP %s not bound: ipMode %s", ing.IP, *ing.IPMode))
			continue
		}
		a, err := parseAddr(ing.IP)
		if err != nil {
			notes = append(notes, fmt.Sprintf("load balancer IP dropped: %v", err))
			continue
		}
		if !fams.has(a) {
			notes = append(notes, fmt.Sprintf("load balancer IP %s dropped: no %s cluster IP", a, familyName(a)))
			continue
		}
		s.LoadBalancerIPs = append(s.LoadBalancerIPs, a)
	}
	s.LoadBalancerIPs = sortAddrs(s.LoadBalancerIPs)

	// Ranges of every family are kept: a range of the other family simply
	// matches no client of this VIP. Validation used to allow spaces around
	// the value, which parsePrefix trims.
	s.SourceRangesRequested = len(svc.Spec.LoadBalancerSourceRanges) > 0
	for _, str := range svc.Spec.LoadBalancerSourceRanges {
		p, err := parsePrefix(str)
		if err != nil {
			notes = append(notes, fmt.Sprintf("loadBalancerSourceRange dropped: %v", err))
			continue
		}
		s.LoadBalancerSourceRanges = append(s.LoadBalancerSourceRanges, p)
	}
	s.LoadBalancerSourceRanges = sortPrefixes(s.LoadBalancerSourceRanges)
	return notes
}

// maxAffinitySeconds is the API's limit on a session affinity timeout
// (core validation's MaxClientIPServiceAffinitySeconds, one day).
const maxAffinitySeconds = 86400

func convertPolicies(svc *v1.Service, s *Service, notes []string) []string {
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		s.AffinityTimeoutSeconds = v1.DefaultClientIPServiceAffinitySeconds
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t > maxAffinitySeconds {
				// The API's maximum; larger ones would overflow the
				// kernel's persistence timeout.
				s.AffinityTimeoutSeconds = maxAffinitySeconds
				notes = append(notes, fmt.Sprintf("sessionAffinity timeout %d capped at %d", t, s.AffinityTimeoutSeconds))
			} else if t > 0 {
				s.AffinityTimeoutSeconds = t
			} else {
				notes = append(notes, fmt.Sprintf("sessionAffinity timeout %d ignored: using default %d", t, s.AffinityTimeoutSeconds))
			}
		}
	}

	// Kept as written: API validation only accepts Local on externally
	// accessible Services (NodePort, LoadBalancer, or with externalIPs),
	// which are the only ones where the planner applies it.
	s.ExternalPolicyLocal = svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	s.InternalPolicyLocal = svc.Spec.InternalTrafficPolicy != nil &&
		*svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal

	// Only LoadBalancers with Local policy get a health check node port
	// (upstream NeedsHealthCheck).
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && s.ExternalPolicyLocal {
		if hc := svc.Spec.HealthCheckNodePort; hc > 0 && hc <= 65535 {
			s.HealthCheckNodePort = uint16(hc)
		} else {
			notes = append(notes, fmt.Sprintf("no valid healthCheckNodePort (%d) for a Local LoadBalancer", hc))
		}
	}
	if svc.Spec.TrafficDistribution != nil {
		s.TrafficDistribution = *svc.Spec.TrafficDistribution
	}
	return notes
}
