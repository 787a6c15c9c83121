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
	// SchedulerAvailable reports whether the kernel can load a scheduler
	// (Schedulers.Available); nil: every scheduler. A Service annotated
	// with one it cannot load gets Scheduler and a Problem.
	SchedulerAvailable func(name string) bool
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
	// ExcludeCIDRs (--ipvs-exclude-cidrs): as upstream, they only protect
	// what another program made: the applier never deletes nor unbinds an
	// unplanned virtual server or address inside one of them (see
	// Excluded). Services and node addresses there are planned as any
	// other.
	ExcludeCIDRs []netip.Prefix
	// IPv4Only leaves IPv6 out: no IPv6 virtual server is planned, as
	// upstream runs single-stack IPv4 when ip6tables is not usable (the
	// IPv6 ipsets and rules IPVS relies on could not be made).
	IPv4Only bool
	// LocalFallbackToCluster chooses, for externalTrafficPolicy: Local
	// Services with no endpoint on this node, upstream IPVS mode's
	// behaviour: the node port, external and load-balancer virtual servers
	// balance to the cluster's endpoints. When false (the default), they
	// are kept with no real server, so the traffic is refused, as
	// upstream's iptables and nftables modes do (see select.go).
	LocalFallbackToCluster bool
	// HeldMarks are the firewall marks Service ports have now
	// (Applier.HeldMarks): they keep them, and other ports avoid them
	// (fwmark.go). nil: marks are chosen from ServiceMark alone.
	HeldMarks map[MarkOwner]uint32
}

// planner holds the normalized Config for one planning run.
type planner struct {
	scheduler         string
	flags             Flags
	schedAvailable    func(string) bool
	nodeAddrs         []netip.Addr
	local             []netip.Addr
	exclude           []netip.Prefix
	fallbackToCluster bool
	ipv4Only          bool
	heldMarks         map[MarkOwner]uint32
	// markUsers are the marks taken, by HeldMarks or in this run.
	markUsers map[uint32]MarkOwner
	// This node, for local endpoints and topology hints ("" when unknown:
	// no endpoint is local and no hint matches).
	node, zone string
	// problems found while planning, in Service order.
	problems []Problem
}

func newPlanner(cfg Config, node *servicecache.Node) planner {
	p := planner{
		scheduler:         cfg.Scheduler,
		schedAvailable:    cfg.SchedulerAvailable,
		exclude:           normalizePrefixes(cfg.ExcludeCIDRs),
		local:             normalizeAddrs(cfg.LocalAddresses),
		fallbackToCluster: cfg.LocalFallbackToCluster,
		ipv4Only:          cfg.IPv4Only,
		heldMarks:         cfg.HeldMarks,
	}
	p.nodeAddrs = normalizeAddrs(cfg.NodePortAddresses)
	if node != nil {
		p.node, p.zone = node.Name, node.Zone
	}
	if p.scheduler == "" {
		p.scheduler = DefaultScheduler
	}
	// Upstream hashes the source port too with maglev, otherwise every
	// connection from one client lands on the same backend.
	p.flags = defaultSchedFlags(p.scheduler)
	return p
}

// Excluded reports whether addr lies in one of cfg.ExcludeCIDRs: the
// applier must neither delete a virtual server found on it that the plan
// does not want nor unbind it from kube-ipvs0 unless the plan binds it.
func Excluded(cfg Config, addr netip.Addr) bool {
	return excluded(normalizePrefixes(cfg.ExcludeCIDRs), addr)
}

// Excluded is Excluded for the Config d was planned with.
func (d *Desired) Excluded(addr netip.Addr) bool {
	return d != nil && excluded(d.ExcludeCIDRs, addr)
}

func excluded(prefixes []netip.Prefix, addr netip.Addr) bool {
	if len(prefixes) == 0 {
		return false
	}
	addr = addr.Unmap()
	for _, pfx := range prefixes {
		if pfx.Contains(addr) {
			return true
		}
	}
	return false
}

// normalizePrefixes drops invalid prefixes, masks them and turns
// IPv4-mapped IPv6 ones (::ffff:10.0.0.0/104) into IPv4 ones, copying only
// when something must change.
func normalizePrefixes(pfxs []netip.Prefix) []netip.Prefix {
	clean := true
	for _, pfx := range pfxs {
		if !pfx.IsValid() || pfx.Addr().Is4In6() || pfx != pfx.Masked() {
			clean = false
			break
		}
	}
	if clean {
		return pfxs
	}
	out := make([]netip.Prefix, 0, len(pfxs))
	for _, pfx := range pfxs {
		if !pfx.IsValid() {
			continue
		}
		if a := pfx.Addr(); a.Is4In6() {
			if pfx.Bits() < 96 {
				// Wider than the mapped range: it also holds real IPv6
				// addresses, keep it as written.
				out = append(out, pfx.Masked())
				continue
			}
			pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
		}
		out = append(out, pfx.Masked())
	}
	return out
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
// same external IP and port), the older keeps it (see Precedes) and the
// other gets a Problem.
//
// The endpoints are selected for the node in snap.Node (local endpoints,
// topology hints): a change of its name or zone needs a full Plan.
func Plan(snap *servicecache.Snapshot, cfg Config) *Desired {
	var services []*servicecache.Service
	var node *servicecache.Node
	if snap != nil {
		services, node = snap.Services, &snap.Node
	}
	p := newPlanner(cfg, node)
	// Sized for the common one or two virtual servers per Service rather
	// than counted first, which would walk every Service twice.
	d := newDesired(p, 2*len(services), len(services))
	as := assembly{d: d, addrs: make([]netip.Addr, 0, 2*len(services)), snap: snap}
	for _, svc := range services {
		as.add(svc, p.service(svc))
	}
	as.finish(&p)
	d.LocalAddresses = sortedAddrs(cfg.LocalAddresses)
	return d
}

// PlanServices plans only the Services named by keys, for an incremental
// apply (Applier.ApplyServices). A key missing from snap is a deleted
// Service and simply has no entry in ByService. cfg must be the one the last
// full Plan used, and snap.Node the same name and zone (see Plan).
//
// It is PlanChanges without what the Services held: a virtual server one
// of them releases goes to another Service claiming it only at the next
// full Plan. An incremental sync uses PlanChanges.
func PlanServices(snap *servicecache.Snapshot, keys []servicecache.ServiceKey, cfg Config) *Desired {
	return PlanChanges(snap, keys, nil, cfg)
}

// PlanChanges plans the Services named by keys, the changed ones of an
// incremental sync, and held, the virtual servers the applier holds for
// them (Applier.Held), for Applier.ApplyServices. A key missing from snap
// is a deleted Service and simply has no entry in ByService. cfg must be
// the one the last full Plan used, and snap.Node the same name and zone
// (see Plan).
//
// Two Services claiming one virtual server are settled as Plan settles
// them, so it also plans the other Services of snap that claim a virtual
// server of the same key as one of these: an external or load-balancer IP
// one of them claims, or one they held and no longer claim (deleted, or
// changed away), which then goes to the next oldest claimant. They are
// listed in Desired.Replanned: the caller passes them to ApplyServices and
// reports their Problems as those of keys. Finding them walks every
// Service of snap once per round (usually one), comparing addresses, only
// when a planned Service claims an external or load-balancer IP or
// releases a virtual server.
func PlanChanges(snap *servicecache.Snapshot, keys []servicecache.ServiceKey, held []VSKey, cfg Config) *Desired {
	var node *servicecache.Node
	if snap != nil {
		node = &snap.Node
	}
	p := newPlanner(cfg, node)
	d := newDesired(p, 0, len(keys))
	// planned holds the virtual servers of every Service planned, nil for
	// a deleted one.
	planned := make(map[servicecache.ServiceKey][]*VirtualServer, len(keys))
	svcs := make([]*servicecache.Service, 0, len(keys))
	for _, key := range keys {
		if _, dup := planned[key]; dup {
			continue
		}
		var svc *servicecache.Service
		if snap != nil {
			svc = snap.Service(key)
		}
		planned[key] = p.service(svc)
		if svc != nil {
			svcs = append(svcs, svc)
		}
	}
	if snap != nil {
		var found []*servicecache.Service
		found, d.Replanned = p.otherClaimants(snap, planned, held)
		svcs = append(svcs, found...)
	}

	as := assembly{d: d, snap: snap}
	for _, svc := range svcs {
		as.add(svc, planned[svc.Key])
	}
	// Problems come in Service order, whatever the order of keys.
	slices.SortStableFunc(p.problems, func(a, b Problem) int { return a.Service.Compare(b.Service) })
	as.finish(&p)
	return d
}

// otherClaimants plans, into planned, the Services of snap that claim a
// virtual server of the same key as a contested one (see contested) of
// those planned, or as one of held that they no longer claim, and so on
// for the contested ones of the Services found. It returns them, and their
// keys sorted.
func (p *planner) otherClaimants(snap *servicecache.Snapshot, planned map[servicecache.ServiceKey][]*VirtualServer, held []VSKey) ([]*servicecache.Service, []servicecache.ServiceKey) {
	seen := map[VSKey]struct{}{} // looked for already
	next := map[VSKey]struct{}{}
	claimed := map[VSKey]struct{}{}
	for _, vss := range planned {
		for _, vs := range vss {
			claimed[vs.Key] = struct{}{}
			// Even one it held: deleted and created again since, the
			// Service may now be younger than another claimant.
			if contested(vs.Kind) {
				next[vs.Key] = struct{}{}
			}
		}
	}
	for _, k := range held {
		if _, still := claimed[k]; !still {
			next[k] = struct{}{}
		}
	}
	var found []*servicecache.Service
	for len(next) > 0 {
		keys := next
		next = map[VSKey]struct{}{}
		for k := range keys {
			seen[k] = struct{}{}
		}
		for _, svc := range p.claimants(snap, keys, planned) {
			mark := len(p.problems)
			vss := p.service(svc)
			if !claimsAny(vss, keys) {
				p.problems = p.problems[:mark] // an address of another family
				continue
			}
			planned[svc.Key] = vss
			found = append(found, svc)
			for _, vs := range vss {
				if _, done := seen[vs.Key]; !done && contested(vs.Kind) {
					next[vs.Key] = struct{}{}
				}
			}
		}
	}
	keys := make([]servicecache.ServiceKey, len(found))
	for i, svc := range found {
		keys[i] = svc.Key
	}
	slices.SortFunc(keys, servicecache.ServiceKey.Compare)
	return found, keys
}

func newDesired(p planner, nVS, nSvc int) *Desired {
	return &Desired{
		State:             State{VirtualServers: make(map[VSKey]*VirtualServer, nVS)},
		ByService:         make(map[servicecache.ServiceKey][]*VirtualServer, nSvc),
		NodePortAddresses: sortedAddrs(p.nodeAddrs),
		ExcludeCIDRs:      slices.Clone(p.exclude),
	}
}

func sortedAddrs(addrs []netip.Addr) []netip.Addr {
	out := slices.Clone(addrs)
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// PlanService computes the virtual servers of one Service as seen from
// node (nil: an unknown node, which has no local endpoint and matches no
// topology hint). The result may repeat a key when the Service lists an
// address twice (e.g. an external IP that is also its load-balancer IP);
// Plan and PlanChanges keep the first. Problems are not reported, and
// neither are other Services claiming the same virtual servers.
func PlanService(svc *servicecache.Service, node *servicecache.Node, cfg Config) []*VirtualServer {
	p := newPlanner(cfg, node)
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
		if svc.ExternalPolicyLocal {
			n += 4 // two firewall-mark virtual servers per family (fwmark.go)
		}
	}
	return n
}

// service builds the virtual servers of svc: one per cluster IP, external IP
// and load-balancer IP of each port, and one per node address for a
// NodePort. Addresses of a family the Service has no cluster IP of are
// skipped, as upstream's per-family proxiers never see them. Problems with
// svc are appended to p.problems.
func (p *planner) service(svc *servicecache.Service) []*VirtualServer {
	if svc == nil {
		return nil
	}
	sched, flags, problems := p.schedOptions(svc, p.problems)
	p.problems = problems
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
	has6 = has6 && !p.ipv4Only
	b := vsBuilder{
		backing: make([]VirtualServer, 0, n),
		out:     make([]*VirtualServer, 0, n),
		has4:    has4,
		has6:    has6,
	}
	// One buffer holds the real servers of every port: each endpoint is
	// taken at most once per category (cluster, local) a port uses.
	nRS := 0
	for i := range svc.Ports {
		sp := &svc.Ports[i]
		cluster, local := p.categories(svc, sp)
		if cluster {
			nRS += len(sp.Endpoints)
		}
		if local {
			nRS += len(sp.Endpoints)
		}
	}
	rsBuf := make([]RealServer, 0, nRS)
	timeout := uint32(0)
	if svc.AffinityTimeoutSeconds > 0 {
		// ClientIP affinity. The flag and the timeout are part of the
		// virtual server's config (sameConfig), so turning affinity on or
		// off or changing its timeout updates it in place (ipvsadm -E).
		flags |= FlagPersistent
		timeout = uint32(svc.AffinityTimeoutSeconds)
	}
	for i := range svc.Ports {
		sp := &svc.Ports[i]
		proto, ok := ProtoFromV1(sp.Protocol)
		if !ok || sp.Port == 0 {
			continue
		}
		b.sel, rsBuf = p.selectPort(rsBuf, svc, sp)
		b.tmpl = VirtualServer{
			Key:       VSKey{Port: sp.Port, Proto: proto},
			Scheduler: sched,
			Flags:     flags,
			Timeout:   timeout,
			Service:   svc.Key,
			PortName:  sp.Name,
		}
		for _, ip := range svc.ClusterIPs {
			b.add(ip, sp.Port, KindClusterIP, true)
		}
		external := len(b.out)
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
		b.addFWMark(p, external)
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
	sel        portSelection
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
	fam := famIndex(ip.Is4())
	if kind == KindClusterIP {
		vs.RealServers = b.sel.internal[fam]
	} else {
		vs.RealServers = b.sel.external[fam]
	}
	b.backing = append(b.backing, vs)
	b.out = append(b.out, &b.backing[len(b.backing)-1])
}
