package ipvs

import (
	"net/netip"
	"slices"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Config is what the planner needs besides the Services.
type Config struct {
	// Scheduler for every virtual server; "" means DefaultScheduler.
	Scheduler string
	// NodePortAddresses are the node addresses NodePort virtual servers are
	// put on (the caller resolves --nodeport-addresses against the node's
	// addresses). Both families may be mixed.
	NodePortAddresses []netip.Addr
	// LocalAddresses are addresses already assigned to other interfaces of
	// the node. External and load-balancer IPs among them get virtual
	// servers but are not bound on kube-ipvs0, as upstream: a second copy of
	// a node address on kube-ipvs0 would take the node's address away with
	// it when it is later unbound.
	LocalAddresses []netip.Addr
}

// planner holds the normalized Config for one planning run.
type planner struct {
	scheduler string
	flags     Flags
	nodeAddrs []netip.Addr
	local     []netip.Addr
}

func newPlanner(cfg Config) planner {
	p := planner{
		scheduler: cfg.Scheduler,
		nodeAddrs: normalizeAddrs(cfg.NodePortAddresses),
		local:     normalizeAddrs(cfg.LocalAddresses),
	}
	if p.scheduler == "" {
		p.scheduler = DefaultScheduler
	}
	if p.scheduler == "mh" {
		// Upstream hashes the source port too with maglev, otherwise every
		// connection from one client lands on the same backend.
		p.flags |= FlagSched2
	}
	return p
}

// normalizeAddrs drops invalid addresses and unmaps IPv4-in-IPv6 ones,
// copying only when something must change (the usual case is a no-op).
func normalizeAddrs(addrs []netip.Addr) []netip.Addr {
	clean := true
	for _, a := range addrs {
		if !usableAddr(a) || a.Is4In6() {
			clean = false
			break
		}
	}
	if clean {
		return addrs
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if a = a.Unmap(); usableAddr(a) {
			out = append(out, a)
		}
	}
	return out
}

// usableAddr rejects the zero Addr and unspecified addresses.
func usableAddr(a netip.Addr) bool { return a.IsValid() && !a.IsUnspecified() }

// Plan computes every virtual server and bound address for snap. It is
// deterministic: when two Services claim the same virtual server (e.g. the
// same external IP and port), the first in snapshot order wins.
func Plan(snap *servicecache.Snapshot, cfg Config) *Desired {
	p := newPlanner(cfg)
	var services []*servicecache.Service
	if snap != nil {
		services = snap.Services
	}
	// Sized for the common one or two virtual servers per Service rather
	// than counted first, which would walk every Service twice.
	d := newDesired(p, 2*len(services), len(services))
	addrs := make([]netip.Addr, 0, 2*len(services))
	for _, svc := range services {
		addrs = d.add(svc, p.service(svc), addrs)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	d.Addresses = slices.Clip(slices.Compact(addrs))
	return d
}

// PlanServices plans only the Services named by keys, for an incremental
// apply (Applier.ApplyServices). A key missing from snap is a deleted
// Service and simply has no entry in ByService. cfg must be the one the last
// full Plan used.
func PlanServices(snap *servicecache.Snapshot, keys []servicecache.ServiceKey, cfg Config) *Desired {
	p := newPlanner(cfg)
	d := newDesired(p, 0, len(keys))
	var addrs []netip.Addr
	for _, key := range keys {
		var svc *servicecache.Service
		if snap != nil {
			svc = snap.Service(key)
		}
		if svc != nil {
			addrs = d.add(svc, p.service(svc), addrs)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	d.Addresses = slices.Compact(addrs)
	return d
}

func newDesired(p planner, nVS, nSvc int) *Desired {
	return &Desired{
		State:             State{VirtualServers: make(map[VSKey]*VirtualServer, nVS)},
		ByService:         make(map[servicecache.ServiceKey][]*VirtualServer, nSvc),
		NodePortAddresses: sortedAddrs(p.nodeAddrs),
	}
}

// add records one Service's virtual servers, dropping keys an earlier
// Service already claimed, and appends the addresses to bind to addrs.
func (d *Desired) add(svc *servicecache.Service, vss []*VirtualServer, addrs []netip.Addr) []netip.Addr {
	if svc == nil || len(vss) == 0 {
		return addrs
	}
	if _, dup := d.ByService[svc.Key]; dup {
		return addrs
	}
	kept := vss[:0]
	for _, vs := range vss {
		if _, dup := d.VirtualServers[vs.Key]; dup {
			continue
		}
		d.VirtualServers[vs.Key] = vs
		kept = append(kept, vs)
		if vs.Bind {
			addrs = append(addrs, vs.Key.Addr)
		}
	}
	if len(kept) > 0 {
		d.ByService[svc.Key] = kept
	}
	return addrs
}

func sortedAddrs(addrs []netip.Addr) []netip.Addr {
	out := slices.Clone(addrs)
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// PlanService computes the virtual servers of one Service. The result may
// repeat a key when the Service lists an address twice (e.g. an external IP
// that is also its load-balancer IP); Plan and PlanServices keep the first.
func PlanService(svc *servicecache.Service, cfg Config) []*VirtualServer {
	p := newPlanner(cfg)
	return p.service(svc)
}

// count is an upper bound of the virtual servers of svc, used to allocate
// once.
func (p *planner) count(svc *servicecache.Service) int {
	if svc == nil {
		return 0
	}
	perPort := len(svc.ClusterIPs) + len(svc.ExternalIPs) + len(svc.LoadBalancerIPs)
	n := 0
	for i := range svc.Ports {
		n += perPort
		if svc.Ports[i].NodePort != 0 {
			n += len(p.nodeAddrs)
		}
	}
	return n
}

// service builds the virtual servers of svc: one per cluster IP, external IP
// and load-balancer IP of each port, and one per node address for a
// NodePort. Addresses of a family the Service has no cluster IP of are
// skipped, as upstream's per-family proxiers never see them.
func (p *planner) service(svc *servicecache.Service) []*VirtualServer {
	n := p.count(svc)
	if n == 0 {
		return nil
	}
	var has4, has6 bool
	for _, ip := range svc.ClusterIPs {
		if ip = ip.Unmap(); usableAddr(ip) {
			has4 = has4 || ip.Is4()
			has6 = has6 || ip.Is6()
		}
	}
	b := vsBuilder{
		backing: make([]VirtualServer, 0, n),
		out:     make([]*VirtualServer, 0, n),
		has4:    has4,
		has6:    has6,
	}
	// One buffer holds the real servers of every port.
	nEps := 0
	for i := range svc.Ports {
		nEps += len(svc.Ports[i].Endpoints)
	}
	rsBuf := make([]RealServer, 0, nEps)
	flags, timeout := p.flags, uint32(0)
	if svc.AffinityTimeoutSeconds > 0 {
		flags |= FlagPersistent
		timeout = uint32(svc.AffinityTimeoutSeconds)
	}
	for i := range svc.Ports {
		sp := &svc.Ports[i]
		proto, ok := ProtoFromV1(sp.Protocol)
		if !ok || sp.Port == 0 {
			continue
		}
		var rs4, rs6 []RealServer
		rs4, rs6, rsBuf = selectRealServers(rsBuf, sp.Endpoints)
		b.tmpl = VirtualServer{
			Key:       VSKey{Port: sp.Port, Proto: proto},
			Scheduler: p.scheduler,
			Flags:     flags,
			Timeout:   timeout,
			Service:   svc.Key,
			PortName:  sp.Name,
		}
		b.rs4, b.rs6 = rs4, rs6
		for _, ip := range svc.ClusterIPs {
			b.add(ip, sp.Port, KindClusterIP, true)
		}
		for _, ip := range svc.ExternalIPs {
			b.add(ip, sp.Port, KindExternalIP, !p.isLocal(ip))
		}
		for _, ip := range svc.LoadBalancerIPs {
			b.add(ip, sp.Port, KindLoadBalancer, !p.isLocal(ip))
		}
		if sp.NodePort != 0 {
			for _, ip := range p.nodeAddrs {
				b.add(ip, sp.NodePort, KindNodePort, false)
			}
		}
	}
	return b.out
}

// isLocal says whether ip is already a node address, so must not be bound.
func (p *planner) isLocal(ip netip.Addr) bool {
	ip = ip.Unmap()
	return slices.Contains(p.local, ip) || slices.Contains(p.nodeAddrs, ip)
}

// vsBuilder allocates the virtual servers of one Service in one block.
type vsBuilder struct {
	backing    []VirtualServer
	out        []*VirtualServer
	tmpl       VirtualServer
	rs4, rs6   []RealServer
	has4, has6 bool
}

func (b *vsBuilder) add(ip netip.Addr, port uint16, kind Kind, bind bool) {
	ip = ip.Unmap()
	if !usableAddr(ip) || (ip.Is4() && !b.has4) || (ip.Is6() && !b.has6) {
		return
	}
	vs := b.tmpl
	vs.Key.Addr, vs.Key.Port = ip, port
	vs.Kind, vs.Bind = kind, bind
	if ip.Is4() {
		vs.RealServers = b.rs4
	} else {
		vs.RealServers = b.rs6
	}
	b.backing = append(b.backing, vs)
	b.out = append(b.out, &b.backing[len(b.backing)-1])
}

// selectRealServers picks the endpoints to balance to, per family: the
// ready ones or, when a family has none, the serving and terminating ones
// (upstream's fallback, so connections still work during a rollout that
// replaces every pod). The results are sorted, and carved out of buf, whose
// remainder is returned for the next port.
func selectRealServers(buf []RealServer, eps []servicecache.Endpoint) (rs4, rs6, rest []RealServer) {
	var ready4, ready6, term4, term6 int
	for i := range eps {
		ep := &eps[i]
		a := ep.Addr.Unmap()
		if !usableAddr(a) || ep.Port == 0 {
			continue
		}
		switch {
		case ep.Ready && a.Is4():
			ready4++
		case ep.Ready:
			ready6++
		case ep.Serving && ep.Terminating && a.Is4():
			term4++
		case ep.Serving && ep.Terminating:
			term6++
		}
	}
	useReady4, useReady6 := ready4 > 0, ready6 > 0
	n4, n6 := term4, term6
	if useReady4 {
		n4 = ready4
	}
	if useReady6 {
		n6 = ready6
	}
	if n4+n6 == 0 {
		return nil, nil, buf
	}
	if cap(buf)-len(buf) < n4+n6 {
		buf = make([]RealServer, 0, n4+n6) // only if the caller's guess was short
	}
	v4 := appendUsable(buf, eps, true, useReady4)
	v6 := appendUsable(v4[len(v4):], eps, false, useReady6)
	rest = v6[len(v6):]
	return sortedUnique(v4), sortedUnique(v6), rest
}

// appendUsable appends the endpoints of one family that pass the filter.
func appendUsable(buf []RealServer, eps []servicecache.Endpoint, v4, ready bool) []RealServer {
	for i := range eps {
		ep := &eps[i]
		a := ep.Addr.Unmap()
		if !usableAddr(a) || ep.Port == 0 || a.Is4() != v4 {
			continue
		}
		if (ready && ep.Ready) || (!ready && !ep.Ready && ep.Serving && ep.Terminating) {
			buf = append(buf, RealServer{Key: RSKey{Addr: a, Port: ep.Port}, Weight: 1, Forward: ForwardMasq})
		}
	}
	return buf
}

// sortedUnique sorts in place (the snapshot is already sorted, so this is
// usually just a check), drops duplicate keys and caps the capacity so that
// no append can reach the other family's half of the buffer.
func sortedUnique(rs []RealServer) []RealServer {
	if len(rs) == 0 {
		return nil
	}
	if !slices.IsSortedFunc(rs, compareRS) {
		slices.SortStableFunc(rs, compareRS)
	}
	rs = slices.CompactFunc(rs, func(a, b RealServer) bool { return a.Key == b.Key })
	return slices.Clip(rs)
}

func compareRS(a, b RealServer) int { return a.Key.Compare(b.Key) }
