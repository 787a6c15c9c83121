package ipvs

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// ErrNotReconciled is returned by ApplyServices before the first Reconcile:
// there is no known kernel state to apply a difference to.
var ErrNotReconciled = errors.New("ipvs: no full reconcile has run yet")

// Applier brings the kernel to a Desired state with as few operations as
// possible.
//
// Reconcile reads the kernel (one IPVS dump and one address listing) and
// applies the whole difference; ApplyServices then applies the difference
// for a few changed Services against the state kept in memory, without
// reading the kernel.
//
// Ownership: the applier only touches the virtual servers on the addresses
// bound to kube-ipvs0 (or to be bound), the ones the plan wants, the ones on
// the host's addresses (NodePort addresses and Desired.LocalAddresses) with
// a port in the NodePort range, its firewall-mark ones, and the ones it made
// or saw as its own. Any other virtual server in the kernel (another
// program's, on a host address too) is left alone.
//
// Exclusion: a virtual server on an address ApplierOptions.Excluded
// reports (--ipvs-exclude-cidrs) is never deleted nor changed unless the
// plan wants it, and such an address is never unbound from kube-ipvs0
// unless the plan binds it. As upstream, the planner still plans Services
// and node addresses there: exclusion only protects what another program
// made.
//
// Graceful termination (with ApplierOptions.GracefulTerminationTimeout): a
// TCP real server that is no longer wanted, and still has connections, is
// drained instead of deleted: its weight is set to 0 so that it gets no new
// connections, and ProcessDraining deletes it once it has none or the
// timeout has passed (see graceful.go).
//
// Every op is attempted even when others fail; the errors are joined, each
// naming the op and its Service. The in-memory state records only what
// succeeded, and the virtual servers and addresses with failed ops are
// retried by the next ApplyServices (and by the next Reconcile, which the
// caller should run periodically anyway, to repair outside changes).
type Applier struct {
	ipvs  IPVS
	links Links

	graceTimeout time.Duration
	excluded     func(netip.Addr) bool
	now          func() time.Time
	progress     func()

	mu     sync.Mutex
	synced bool
	// observed is the part of the kernel the applier owns, as it knows it.
	observed map[VSKey]*VirtualServer
	addrs    map[netip.Addr]struct{}
	// desired is the last wanted state, kept to apply per-Service changes.
	desired   map[VSKey]*VirtualServer
	byService map[servicecache.ServiceKey][]*VirtualServer
	// fwmarks are the firewall-mark virtual servers of desired, for
	// MarkEntries and HeldMarks without a walk of every server.
	fwmarks map[VSKey]*VirtualServer
	// addrRefs counts the wanted virtual servers that need each address
	// bound, since Services can share an address (external IPs).
	addrRefs map[netip.Addr]int
	// retryVS and retryAddrs had failed ops (failures.go): ApplyServices
	// retries them once their backoff has passed, Reconcile at once.
	retryVS    map[VSKey]*retry
	retryAddrs map[netip.Addr]*retry
	// draining holds the real servers being drained, with the time they
	// are deleted at the latest. They are in observed, with weight 0.
	draining map[VSKey]map[RSKey]time.Time
	// changed counts the ops that succeeded (TakeChanged).
	changed atomic.Int64
	// lastFull keeps the address lists of the last Reconcile's plan, and
	// knownOK says desired is what Plan would compute for the Services
	// applied since (see Known). PlanChanges settles two Services
	// claiming one virtual server as Plan does, but only if the caller
	// gave it what they held, so knownOK is false from any plan with a
	// Conflict, or a clash ApplyServices finds, until a Reconcile whose
	// plan has none: a periodic resync then plans in full.
	lastFull Desired
	knownOK  bool
	// clean is the digest (digestState) of what the last Reconcile read,
	// valid (cleanOK) when it found nothing to change and nothing has
	// been changed since: see Resync.
	clean   uint64
	cleanOK bool
}

// ApplierOptions are the Applier's settings; the zero value is the plain
// behaviour (real servers deleted at once, nothing excluded).
type ApplierOptions struct {
	// GracefulTerminationTimeout is the longest a TCP real server that is
	// no longer wanted is drained (weight 0) before it is deleted even with
	// connections left. Zero or less: real servers are deleted at once.
	// Upstream has no such limit; the proxy's flag defaults to 60s.
	GracefulTerminationTimeout time.Duration
	// Excluded reports the addresses whose virtual servers the proxy must
	// not touch (--ipvs-exclude-cidrs, e.g. ipvs.Excluded for the planner's
	// Config). Nil: none.
	Excluded func(netip.Addr) bool
	// Now is the clock of graceful termination; nil is time.Now.
	Now func() time.Time
	// Progress, when set, is called after every progressOps kernel
	// operations: a cold sync of thousands of virtual servers is alive.
	Progress func()
}

// NewApplier returns an applier over the given kernel interfaces, with
// the zero ApplierOptions.
func NewApplier(ipvs IPVS, links Links) *Applier {
	return NewApplierWithOptions(ipvs, links, ApplierOptions{})
}

// NewApplierWithOptions returns an applier over the given kernel interfaces.
func NewApplierWithOptions(ipvs IPVS, links Links, opts ApplierOptions) *Applier {
	a := &Applier{ipvs: ipvs, links: links, graceTimeout: opts.GracefulTerminationTimeout, excluded: opts.Excluded, now: opts.Now, progress: opts.Progress}
	if a.now == nil {
		a.now = time.Now
	}
	return a
}

// Reconcile makes the owned part of the kernel match d: it ensures the
// dummy link, reads the kernel and applies the difference.
func (a *Applier) Reconcile(d *Desired) error {
	if d == nil {
		d = &Desired{}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cleanOK = false

	if err := a.links.EnsureLink(); err != nil {
		return fmt.Errorf("ip link add %s type dummy: %w", DummyLinkName, err)
	}
	// ipvsadm -Sn; ip addr show dev kube-ipvs0
	metrics.NetlinkOperationsTotal.WithLabelValues(metrics.SubsystemIPVS, metrics.OpList).Inc()
	kernel, err := ReadKernel(a.ipvs, a.links)
	if err != nil {
		return err
	}
	unsure := a.unsure(kernel, d)
	if unsure {
		if err := confirmServices(a.ipvs, kernel); err != nil {
			return err
		}
	}

	// Ours: every server on an address bound to kube-ipvs0; on the host's
	// own addresses (NodePorts are served on all of them, where other
	// tools have servers too) only the servers the plan wants and those in
	// the NodePort range; and those the applier made or saw as its own.
	bound := make(map[netip.Addr]struct{}, len(kernel.Addresses)+len(d.Addresses))
	for _, list := range [][]netip.Addr{kernel.Addresses, d.Addresses} {
		for _, addr := range list {
			bound[addr] = struct{}{}
		}
	}
	obs := &State{VirtualServers: make(map[VSKey]*VirtualServer, len(d.VirtualServers)), Addresses: kernel.Addresses}
	nodePort := make(map[netip.Addr]struct{}, len(d.LocalAddresses)+len(d.NodePortAddresses))
	for _, list := range [][]netip.Addr{d.LocalAddresses, d.NodePortAddresses} {
		for _, addr := range list {
			nodePort[addr.Unmap()] = struct{}{}
		}
	}
	var others uint64 // the digest of the servers of others
	for key, vs := range kernel.VirtualServers {
		_, mine := bound[key.Addr]
		if key.FWMark != 0 {
			mine = ownedKey(key) // never by address: 0.0.0.0 is everyone's
		}
		if d.VirtualServers[key] != nil {
			mine = true // also external IPs that are host addresses, never bound
		}
		if _, isHost := nodePort[key.Addr]; isHost && DefaultNodePortRange.Contains(key.Port) {
			mine = true // a NodePort virtual server (see Desired.LocalAddresses)
		}
		if mine || a.observed[key] != nil {
			obs.VirtualServers[key] = vs
		} else {
			others += digestVS(vs) // for expectedDigest
		}
	}
	// Draining real servers whose virtual server is gone are done.
	for key := range a.draining {
		if obs.VirtualServers[key] == nil {
			delete(a.draining, key)
		}
	}
	ops, target := a.diff(obs, &d.State)

	a.observed = obs.VirtualServers
	a.addrs = make(map[netip.Addr]struct{}, len(kernel.Addresses))
	for _, addr := range kernel.Addresses {
		a.addrs[addr] = struct{}{}
	}
	a.desired = make(map[VSKey]*VirtualServer, len(d.VirtualServers))
	a.fwmarks = map[VSKey]*VirtualServer{}
	for key, vs := range d.VirtualServers {
		if vs != nil {
			a.desired[key] = vs
			if key.FWMark != 0 {
				a.fwmarks[key] = vs
			}
		}
	}
	a.byService = d.ByService
	if a.byService == nil {
		a.byService = groupByService(d.VirtualServers)
	} else {
		a.byService = maps.Clone(a.byService)
	}
	a.addrRefs = make(map[netip.Addr]int, len(d.Addresses))
	for _, vs := range a.desired {
		if vs.Bind {
			a.addrRefs[vs.Key.Addr]++
		}
	}
	prevVS, prevAddrs := a.retryVS, a.retryAddrs
	a.retryVS, a.retryAddrs = map[VSKey]*retry{}, map[netip.Addr]*retry{}
	a.synced = true
	a.lastFull = Desired{NodePortAddresses: d.NodePortAddresses, LocalAddresses: d.LocalAddresses, ExcludeCIDRs: d.ExcludeCIDRs}
	a.knownOK = d.Conflicts == 0

	// Servers that need no op already match: remember the planned value,
	// which carries the Service it belongs to (and the draining real
	// servers).
	touched := make(map[VSKey]struct{})
	for _, op := range ops {
		if op.VS != nil {
			touched[op.VS.Key] = struct{}{}
		}
	}
	for key := range a.desired {
		if _, ok := touched[key]; !ok && a.observed[key] != nil {
			a.observed[key] = target[key]
		}
	}
	ok, err := a.execute(ops, target)
	a.carry(prevVS, prevAddrs)
	switch {
	case len(a.draining) > 0:
	case len(ops) == 0 && !unsure:
		// The kernel is as wanted, as read: a later Resync that reads the
		// same needs nothing.
		a.clean, a.cleanOK = digestState(kernel), true
	case len(ops) > 0 && err == nil:
		// Every op succeeded: the kernel should now hold the servers of
		// others as read and ours as the applier holds them. Should it
		// not, the next Resync reconciles in full.
		a.clean, a.cleanOK = a.expectedDigest(others), true
	}
	return a.nodeError(ops, ok, err)
}

// ApplyServices applies the plan of the Services named by keys and
// part.Replanned (a PlanChanges result: a Service in keys without virtual
// servers in part is removed) against the state in memory, and retries
// what failed before. The Config behind part must be the one of the last
// Reconcile; when it changes (node addresses...), Reconcile instead.
//
// PlanChanges settles who keeps a virtual server two Services claim, and
// plans every claimant, so a virtual server a Service releases goes to
// the next claimant here. A virtual server that a Service outside the
// batch has all the same (a cluster IP or node port of a planned Service
// that an unchanged Service claims as an external IP, which PlanChanges
// does not look for) is skipped; the next Reconcile settles it.
func (a *Applier) ApplyServices(keys []servicecache.ServiceKey, part *Desired) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.synced {
		return ErrNotReconciled
	}
	a.cleanOK = false // the wanted state changes
	var newBy map[servicecache.ServiceKey][]*VirtualServer
	var replanned []servicecache.ServiceKey
	if part != nil {
		if part.Conflicts > 0 {
			// Settled as Plan would, but Known stays conservative: see
			// knownOK.
			a.knownOK = false
		}
		newBy = part.ByService
		if newBy == nil {
			newBy = groupByService(part.VirtualServers)
		}
		replanned = part.Replanned
	}

	// Services to redo, in order so that a clash with a Service outside
	// the batch resolves the same way every time.
	set := make(map[servicecache.ServiceKey]struct{}, len(keys)+len(newBy)+len(replanned))
	for _, list := range [...][]servicecache.ServiceKey{keys, replanned} {
		for _, k := range list {
			set[k] = struct{}{}
		}
	}
	for k := range newBy {
		set[k] = struct{}{}
	}
	svcs := slices.SortedFunc(maps.Keys(set), servicecache.ServiceKey.Compare)

	subObs := &State{VirtualServers: map[VSKey]*VirtualServer{}}
	subWant := &State{VirtualServers: map[VSKey]*VirtualServer{}}
	touchedAddrs := map[netip.Addr]struct{}{}

	// Forget what these Services wanted...
	for _, svc := range svcs {
		old := a.byService[svc]
		delete(a.byService, svc)
		for _, vs := range old {
			if vs == nil {
				continue
			}
			if have := a.observed[vs.Key]; have != nil {
				subObs.VirtualServers[vs.Key] = have
			}
			delete(a.desired, vs.Key)
			delete(a.fwmarks, vs.Key)
			if vs.Bind {
				a.unref(vs.Key.Addr)
				touchedAddrs[vs.Key.Addr] = struct{}{}
			}
		}
	}
	// ...then record what they want now.
	for _, svc := range svcs {
		vss := newBy[svc] // none: the Service is gone
		kept := make([]*VirtualServer, 0, len(vss))
		for _, vs := range vss {
			if vs == nil {
				continue
			}
			if had, taken := a.desired[vs.Key]; taken {
				if had.Service != svc {
					// The planner did not see had's claim: the next
					// Reconcile settles it.
					a.knownOK = false
				}
				continue
			}
			a.desired[vs.Key] = vs
			if vs.Key.FWMark != 0 {
				if a.fwmarks == nil {
					a.fwmarks = map[VSKey]*VirtualServer{}
				}
				a.fwmarks[vs.Key] = vs
			}
			subWant.VirtualServers[vs.Key] = vs
			kept = append(kept, vs)
			if have := a.observed[vs.Key]; have != nil {
				subObs.VirtualServers[vs.Key] = have
			}
			if vs.Bind {
				a.addrRefs[vs.Key.Addr]++
				touchedAddrs[vs.Key.Addr] = struct{}{}
			}
		}
		if len(kept) > 0 {
			a.byService[svc] = kept
		}
	}
	// Retry what failed, whichever Service it belongs to, once its backoff
	// has passed (failures.go); what is redone above anyway is retried now.
	prevVS, prevAddrs := a.retryVS, a.retryAddrs
	a.retryVS, a.retryAddrs = map[VSKey]*retry{}, map[netip.Addr]*retry{}
	now := a.now()
	for key, r := range prevVS {
		_, redo := subWant.VirtualServers[key]
		if _, had := subObs.VirtualServers[key]; had {
			redo = true
		}
		if !redo && r.next.After(now) {
			a.retryVS[key] = r
			continue
		}
		if want := a.desired[key]; want != nil {
			subWant.VirtualServers[key] = want
		}
		if have := a.observed[key]; have != nil {
			subObs.VirtualServers[key] = have
		}
	}
	for addr, r := range prevAddrs {
		if _, redo := touchedAddrs[addr]; !redo && r.next.After(now) {
			a.retryAddrs[addr] = r
			continue
		}
		touchedAddrs[addr] = struct{}{}
	}

	for addr := range touchedAddrs {
		if _, bound := a.addrs[addr]; bound {
			subObs.Addresses = append(subObs.Addresses, addr)
		}
		if a.addrRefs[addr] > 0 {
			subWant.Addresses = append(subWant.Addresses, addr)
		}
	}
	slices.SortFunc(subObs.Addresses, netip.Addr.Compare)
	slices.SortFunc(subWant.Addresses, netip.Addr.Compare)

	ops, target := a.diff(subObs, subWant)
	ok, err := a.execute(ops, target)
	a.carry(prevVS, prevAddrs)
	return a.nodeError(ops, ok, err)
}

// Held returns the keys of the virtual servers the applier holds for the
// Services named by keys, sorted: what PlanChanges needs to give one they
// release to the next Service claiming it.
func (a *Applier) Held(keys []servicecache.ServiceKey) []VSKey {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []VSKey
	for _, k := range keys {
		for _, vs := range a.byService[k] {
			if vs != nil {
				out = append(out, vs.Key)
			}
		}
	}
	slices.SortFunc(out, VSKey.Compare)
	return slices.Compact(out)
}

func (a *Applier) unref(addr netip.Addr) {
	if a.addrRefs[addr] <= 1 {
		delete(a.addrRefs, addr)
		return
	}
	a.addrRefs[addr]--
}

// Observed returns the owned kernel state as the applier knows it,
// draining real servers included (weight 0). The virtual servers are shared
// and must not be modified.
func (a *Applier) Observed() *State {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := &State{VirtualServers: maps.Clone(a.observed)}
	for addr := range a.addrs {
		st.Addresses = append(st.Addresses, addr)
	}
	slices.SortFunc(st.Addresses, netip.Addr.Compare)
	return st
}

// groupByService rebuilds ByService for a Desired made without it.
func groupByService(vss map[VSKey]*VirtualServer) map[servicecache.ServiceKey][]*VirtualServer {
	by := map[servicecache.ServiceKey][]*VirtualServer{}
	for _, vs := range vss {
		if vs != nil {
			by[vs.Service] = append(by[vs.Service], vs)
		}
	}
	for _, list := range by {
		slices.SortFunc(list, func(x, y *VirtualServer) int { return x.Key.Compare(y.Key) })
	}
	return by
}
