package inspect

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Input is what a report is built from: the kernel's table and, unless
// KernelOnly, every Service and the EndpointSlices of the Services the
// filters select.
type Input struct {
	VirtualServers []VirtualServer
	// Services must be all of the cluster's, even with a filter: a
	// virtual server on an address that is some Service's VIP is never
	// taken for a NodePort.
	Services       []v1.Service
	EndpointSlices []discovery.EndpointSlice
	// KernelOnly reports the table without looking anything up: Services
	// and EndpointSlices are ignored.
	KernelOnly bool
	// Filter, when set, keeps only the virtual servers of matching
	// Services (ignored with KernelOnly).
	Filter Filter
}

// Report is the table with, for each virtual server, the Service ports it
// serves and, for each real server, the endpoint it is.
type Report struct {
	// KernelOnly reports were built without the API server: Owners and
	// Endpoint are never set.
	KernelOnly     bool
	VirtualServers []VirtualServerReport
}

// VirtualServerReport is a virtual server with its owners.
type VirtualServerReport struct {
	VirtualServer
	// Owners are the Service ports the virtual server serves, sorted.
	// Empty when no Service owns it (another tool's, or stale). More than
	// one when Services share an address and port (e.g. the same external
	// IP in two Services), which the API server does not prevent.
	Owners      []Owner
	RealServers []RealServerReport
}

// Owner is a Service port a virtual server serves.
type Owner struct {
	Service servicecache.ServiceKey
	// PortName is the Service port's name ("" for an unnamed port).
	PortName string
	// Kind is which address of the Service the virtual server is on.
	Kind ipvs.Kind
}

// String gives "namespace/name:port-name" (no ":" for an unnamed port).
func (o Owner) String() string {
	s := o.Service.String()
	if o.PortName != "" {
		s += ":" + o.PortName
	}
	return s
}

func compareOwners(a, b Owner) int {
	return cmp.Or(
		cmp.Compare(a.Service.Namespace, b.Service.Namespace),
		cmp.Compare(a.Service.Name, b.Service.Name),
		cmp.Compare(a.PortName, b.PortName),
		cmp.Compare(a.Kind, b.Kind),
	)
}

// RealServerReport is a real server with the endpoint it stands for.
type RealServerReport struct {
	ipvs.DestStats
	// Endpoint is the owning Services' endpoint with this address and
	// port; nil when there is none (a real server being drained after its
	// endpoint went away, a stale one, another tool's) and in kernel-only
	// reports.
	Endpoint *Endpoint
}

// Draining reports a real server at weight 0: the proxy keeps it, without
// new connections, until its connections end.
func (r RealServerReport) Draining() bool { return r.Weight == 0 }

// Endpoint is an EndpointSlice endpoint.
type Endpoint struct {
	// Slice is the EndpointSlice's name.
	Slice string
	// TargetRef is the object behind the endpoint (normally its Pod); nil
	// when the endpoint has none, as for hand-made EndpointSlices.
	TargetRef *TargetRef
	NodeName  string
	// The endpoint's conditions, with the API's defaults applied (a
	// missing ready means ready, a missing serving means as ready).
	Ready       bool
	Serving     bool
	Terminating bool
}

// TargetRef names the object behind an endpoint.
type TargetRef struct {
	Kind      string
	Namespace string
	Name      string
}

// String gives "namespace/name" for a Pod, "Kind namespace/name" for
// anything else (no "namespace/" for a cluster-scoped object).
func (t TargetRef) String() string {
	s := t.Name
	if t.Namespace != "" {
		s = t.Namespace + "/" + s
	}
	if t.Kind != "" && t.Kind != "Pod" {
		s = t.Kind + " " + s
	}
	return s
}

// Build matches the kernel's virtual servers with the Services and their
// real servers with the endpoints.
//
// A virtual server belongs to a Service port when its address is one of
// the Service's cluster IPs, external IPs or load-balancer ingress IPs and
// its port and protocol are the Service port's; or, when its address is no
// Service's such address, when its port and protocol are a NodePort's: the
// virtual servers on node addresses. Services are read as the proxy reads
// them (servicecache.ConvertService), so those it skips (headless,
// ExternalName, another proxy's) own nothing. A real server is the endpoint
// with its address, in an EndpointSlice of an owner with a port of the
// owner's port name and protocol whose number is the real server's port.
func Build(in Input) *Report {
	r := &Report{KernelOnly: in.KernelOnly}
	if in.KernelOnly {
		for _, vs := range in.VirtualServers {
			vr := VirtualServerReport{VirtualServer: vs, RealServers: make([]RealServerReport, len(vs.RealServers))}
			for i, rs := range vs.RealServers {
				vr.RealServers[i] = RealServerReport{DestStats: rs}
			}
			r.VirtualServers = append(r.VirtualServers, vr)
		}
		sortReport(r)
		return r
	}

	idx := newServiceIndex(in.Services)
	eps := newEndpointIndex(in.EndpointSlices)
	for _, vs := range in.VirtualServers {
		owners := idx.owners(vs.Key)
		if !in.Filter.keep(owners) {
			continue
		}
		vr := VirtualServerReport{VirtualServer: vs, Owners: owners, RealServers: make([]RealServerReport, len(vs.RealServers))}
		for i, rs := range vs.RealServers {
			vr.RealServers[i] = RealServerReport{DestStats: rs, Endpoint: eps.find(owners, vs.Key.Proto, rs.Key)}
		}
		r.VirtualServers = append(r.VirtualServers, vr)
	}
	sortReport(r)
	return r
}

func sortReport(r *Report) {
	slices.SortFunc(r.VirtualServers, func(a, b VirtualServerReport) int { return a.Key.Compare(b.Key) })
	for i := range r.VirtualServers {
		vr := &r.VirtualServers[i]
		slices.SortFunc(vr.RealServers, func(a, b RealServerReport) int { return a.Key.Compare(b.Key) })
	}
}

// vipKey is a Service address, port and protocol.
type vipKey struct {
	addr  netip.Addr
	port  uint16
	proto ipvs.Proto
}

// nodePortKey is a NodePort number and protocol.
type nodePortKey struct {
	port  uint16
	proto ipvs.Proto
}

type serviceIndex struct {
	vips map[vipKey][]Owner
	// vipAddrs are every address some Service has a VIP on, whatever the
	// port: a virtual server there is never a NodePort's.
	vipAddrs  map[netip.Addr]bool
	nodePorts map[nodePortKey][]Owner
}

func newServiceIndex(svcs []v1.Service) *serviceIndex {
	idx := &serviceIndex{vips: map[vipKey][]Owner{}, vipAddrs: map[netip.Addr]bool{}, nodePorts: map[nodePortKey][]Owner{}}
	for i := range svcs {
		s, _, _ := servicecache.ConvertService(&svcs[i])
		if s == nil {
			continue
		}
		addrs := []struct {
			kind  ipvs.Kind
			addrs []netip.Addr
		}{
			{ipvs.KindClusterIP, s.ClusterIPs},
			{ipvs.KindExternalIP, s.ExternalIPs},
			{ipvs.KindLoadBalancer, nil},
		}
		if s.Type == v1.ServiceTypeLoadBalancer {
			addrs[2].addrs = s.LoadBalancerIPs
		}
		for _, p := range s.Ports {
			proto, ok := ipvs.ProtoFromV1(p.Protocol)
			if !ok {
				continue
			}
			for _, a := range addrs {
				for _, addr := range a.addrs {
					k := vipKey{addr, p.Port, proto}
					idx.vips[k] = appendOwner(idx.vips[k], Owner{Service: s.Key, PortName: p.Name, Kind: a.kind})
					idx.vipAddrs[addr] = true
				}
			}
			if p.NodePort != 0 {
				k := nodePortKey{p.NodePort, proto}
				idx.nodePorts[k] = appendOwner(idx.nodePorts[k], Owner{Service: s.Key, PortName: p.Name, Kind: ipvs.KindNodePort})
			}
		}
	}
	return idx
}

// appendOwner adds o unless it is there already (an address listed twice,
// e.g. as external IP and load-balancer IP, keeps its first kind).
func appendOwner(list []Owner, o Owner) []Owner {
	for _, x := range list {
		if x.Service == o.Service && x.PortName == o.PortName {
			return list
		}
	}
	return append(list, o)
}

// owners returns a sorted copy of the Service ports a virtual server
// serves.
func (idx *serviceIndex) owners(k ipvs.VSKey) []Owner {
	var list []Owner
	if o := idx.vips[vipKey{k.Addr, k.Port, k.Proto}]; len(o) > 0 {
		list = o
	} else if !idx.vipAddrs[k.Addr] {
		list = idx.nodePorts[nodePortKey{k.Port, k.Proto}]
	}
	if len(list) == 0 {
		return nil
	}
	list = slices.Clone(list)
	slices.SortFunc(list, compareOwners)
	return list
}

// epKey finds an endpoint: the Service port (by name and protocol, as
// EndpointSlice ports name them) and the address and port of the real
// server.
type epKey struct {
	svc      servicecache.ServiceKey
	portName string
	proto    ipvs.Proto
	addr     netip.Addr
	port     uint16
}

type endpointIndex map[epKey]*Endpoint

func newEndpointIndex(list []discovery.EndpointSlice) endpointIndex {
	idx := endpointIndex{}
	for i := range list {
		sl := &list[i]
		name := sl.Labels[discovery.LabelServiceName]
		if name == "" {
			continue
		}
		svc := servicecache.ServiceKey{Namespace: sl.Namespace, Name: name}
		for _, p := range sl.Ports {
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				continue
			}
			v1proto := v1.ProtocolTCP
			if p.Protocol != nil {
				v1proto = *p.Protocol
			}
			proto, ok := ipvs.ProtoFromV1(v1proto)
			if !ok {
				continue
			}
			portName := ""
			if p.Name != nil {
				portName = *p.Name
			}
			for j := range sl.Endpoints {
				e := &sl.Endpoints[j]
				ep := convertEndpoint(sl.Name, e)
				for _, s := range e.Addresses {
					addr, err := netip.ParseAddr(s)
					if err != nil {
						continue
					}
					k := epKey{svc, portName, proto, addr.Unmap(), uint16(*p.Port)}
					// The same endpoint can briefly be in two slices while
					// it moves; the readier copy is the one the proxy uses.
					if old := idx[k]; old == nil || rank(ep) > rank(old) {
						idx[k] = ep
					}
				}
			}
		}
	}
	return idx
}

func convertEndpoint(slice string, e *discovery.Endpoint) *Endpoint {
	ep := &Endpoint{Slice: slice, Ready: true}
	c := e.Conditions
	if c.Ready != nil {
		ep.Ready = *c.Ready
	}
	ep.Serving = ep.Ready
	if c.Serving != nil {
		ep.Serving = *c.Serving
	}
	ep.Terminating = c.Terminating != nil && *c.Terminating
	if e.NodeName != nil {
		ep.NodeName = *e.NodeName
	}
	if r := e.TargetRef; r != nil {
		ep.TargetRef = &TargetRef{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
	}
	return ep
}

func rank(e *Endpoint) int {
	switch {
	case e.Ready:
		return 2
	case e.Serving:
		return 1
	}
	return 0
}

// find returns the endpoint of the first owner with that address and port.
func (idx endpointIndex) find(owners []Owner, proto ipvs.Proto, rs ipvs.RSKey) *Endpoint {
	for _, o := range owners {
		if ep := idx[epKey{o.Service, o.PortName, proto, rs.Addr, rs.Port}]; ep != nil {
			return ep
		}
	}
	return nil
}

// Filter selects Services by namespace, name or both; the zero Filter
// selects everything.
type Filter struct {
	Namespace string
	Name      string
}

// ParseFilter reads --namespace and --service: the Service is a name, in
// every namespace unless namespace is set, or "namespace/name".
func ParseFilter(namespace, service string) (Filter, error) {
	f := Filter{Namespace: namespace, Name: service}
	if ns, name, ok := strings.Cut(service, "/"); ok {
		if ns == "" || name == "" || strings.Contains(name, "/") {
			return Filter{}, fmt.Errorf("service %q: want NAME or NAMESPACE/NAME", service)
		}
		if namespace != "" && namespace != ns {
			return Filter{}, fmt.Errorf("service %q is not in namespace %q", service, namespace)
		}
		f.Namespace, f.Name = ns, name
	}
	return f, nil
}

// IsZero reports a filter that selects everything.
func (f Filter) IsZero() bool { return f == Filter{} }

// keep reports whether a virtual server with these owners is shown: all
// are without a filter, only those of a matching Service with one.
func (f Filter) keep(owners []Owner) bool {
	if f.IsZero() {
		return true
	}
	for _, o := range owners {
		if (f.Namespace == "" || o.Service.Namespace == f.Namespace) && (f.Name == "" || o.Service.Name == f.Name) {
			return true
		}
	}
	return false
}
