// Package servicecache turns the API's Services, EndpointSlices and this
// node's Node into immutable, sorted snapshots for the planners.
package servicecache

import (
	"net/netip"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ServiceKey names a Service.
type ServiceKey struct {
	Namespace string
	Name      string
}

func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// Less orders keys by namespace, then name.
func (k ServiceKey) Less(o ServiceKey) bool {
	if k.Namespace != o.Namespace {
		return k.Namespace < o.Namespace
	}
	return k.Name < o.Name
}

// Compare orders keys as Less does: -1, 0 or +1, for slices.SortFunc and
// slices.BinarySearchFunc.
func (k ServiceKey) Compare(o ServiceKey) int {
	if c := strings.Compare(k.Namespace, o.Namespace); c != 0 {
		return c
	}
	return strings.Compare(k.Name, o.Name)
}

// Service is the part of a Service (with its merged EndpointSlices) that the
// proxy programs. A *Service inside a Snapshot is shared and never mutated:
// a change produces a new value.
type Service struct {
	Key ServiceKey
	// UID is the Service object's, for Events about it.
	UID  types.UID
	Type v1.ServiceType
	// Created is the Service's creationTimestamp: of two Services claiming
	// one external or load-balancer address and port, the older keeps it.
	Created time.Time

	// ClusterIPs holds the valid cluster IPs, primary family first.
	ClusterIPs []netip.Addr
	// ExternalIPs from spec.externalIPs, sorted.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs from status.loadBalancer.ingress in VIP mode, sorted.
	LoadBalancerIPs []netip.Addr
	// LoadBalancerSourceRanges, sorted; empty means no restriction unless
	// SourceRangesRequested.
	LoadBalancerSourceRanges []netip.Prefix
	// SourceRangesRequested: spec.loadBalancerSourceRanges was not empty,
	// even if no range in it could be parsed. Filtering then fails closed:
	// a family without a usable range gets no traffic from outside.
	SourceRangesRequested bool

	// AffinityTimeoutSeconds is >0 when sessionAffinity is ClientIP.
	AffinityTimeoutSeconds int32
	// ExternalPolicyLocal is externalTrafficPolicy: Local.
	ExternalPolicyLocal bool
	// InternalPolicyLocal is internalTrafficPolicy: Local.
	InternalPolicyLocal bool
	// HealthCheckNodePort, for externalTrafficPolicy: Local load balancers.
	HealthCheckNodePort uint16
	// TrafficDistribution from spec.trafficDistribution ("" when unset).
	TrafficDistribution string
	// Annotations the proxy reads (scheduler selection), nil when none.
	Annotations map[string]string

	// Ports, sorted by Name then Protocol.
	Ports []ServicePort
}

// ServicePort is one port of a Service with the endpoints behind it.
type ServicePort struct {
	Name     string
	Protocol v1.Protocol
	Port     uint16
	NodePort uint16 // 0 when the Service has none
	// Endpoints, deduplicated across slices, sorted by Addr then Port.
	// Only endpoints of a family the Service has a cluster IP of.
	Endpoints []Endpoint
}

// Endpoint is one backend address of a ServicePort.
type Endpoint struct {
	Addr        netip.Addr
	Port        uint16
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	Zone        string
	ZoneHints   []string
	NodeHints   []string
}

// Node is what the proxy needs of its own Node object.
type Node struct {
	Name string
	// Addresses: the InternalIP addresses, then the ExternalIP ones, each
	// in status order, without duplicates. The first of each family is
	// the node's primary IP of that family (PrimaryIPs).
	Addresses []netip.Addr
	PodCIDRs  []netip.Prefix
	Zone      string // topology.kubernetes.io/zone label
}

// Snapshot is an immutable view of every proxied Service at one moment.
type Snapshot struct {
	// Services sorted by Key. Skipped Services (headless, ExternalName,
	// other proxies') are absent.
	Services []*Service
	Node     Node
	// Changed lists the Services (present or deleted) that differ from the
	// previous snapshot, sorted.
	Changed []ServiceKey
	// TriggerTimes holds, for changed Services, when the change that led
	// here happened (the EndpointSlices' last-change-trigger-time), for
	// the network programming latency metric. Nil when none is known.
	TriggerTimes map[ServiceKey]time.Time
}

// Service returns the Service with the given key, or nil.
func (s *Snapshot) Service(key ServiceKey) *Service {
	i := sort.Search(len(s.Services), func(i int) bool { return !s.Services[i].Key.Less(key) })
	if i < len(s.Services) && s.Services[i].Key == key {
		return s.Services[i]
	}
	return nil
}
