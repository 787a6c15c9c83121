package ipvs

// Graceful termination of real servers, as upstream's IPVS mode does it
// (pkg/proxy/ipvs/graceful_termination.go), driven by the applier:
//
//   - A real server that is no longer wanted is deleted at once when its
//     protocol does not drain (see drains), when it has no connection, or
//     when the whole virtual server goes (its Service was deleted: upstream
//     deletes the virtual server at once too).
//   - Otherwise it is drained: `ipvsadm -e -t VIP:PORT -r RIP:RPORT -m -w 0`
//     sends it no new connection while the established ones go on, and it is
//     remembered with a deadline (now + GracefulTerminationTimeout).
//   - ProcessDraining, which the caller runs periodically while Draining() >
//     0, reads the connection counts of each draining virtual server (one
//     destination dump per virtual server, `ipvsadm -Ln -t VIP:PORT`, never
//     the whole table) and deletes (`ipvsadm -d`) the real servers that have
//     no connection left (ActiveConn + InActConn == 0) or whose deadline has
//     passed.
//   - An endpoint that comes back while draining gets its weight back with an
//     update (`ipvsadm -e ... -w 1`), not a delete and re-add, so its
//     connections survive.
//   - Reconcile and ApplyServices treat a draining real server as wanted at
//     weight 0: they neither "repair" it back to weight 1 nor delete it early.
//     After a restart, when the memory of what drains is lost, a weight-0
//     real server that is not wanted and still has connections is found by
//     the first Reconcile and drains again, with a new deadline.

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"k8s.io/klog/v2"
)

// drains reports whether real servers of a virtual server of protocol p are
// drained rather than deleted at once. Only TCP drains, as in upstream
// v1.37 (utilipvs.IsRsGracefulTerminationNeeded): UDP and SCTP real servers
// are deleted at once. For UDP there is no end of a "connection" to wait
// for, and the entries of a busy client (DNS) would keep a dead backend in
// use forever; with net.ipv4.vs.expire_nodest_conn=1 (set at start) the
// kernel drops a deleted destination's entries on their next packet, so the
// client's retry reaches a live backend. SCTP follows upstream for the same
// reason: associations are long-lived (heartbeats keep them active), so
// draining would only delay the removal until the timeout.
func drains(p Proto) bool { return p == ProtoTCP }

// Draining returns how many real servers are being drained. While it is
// not 0, the caller should run ProcessDraining periodically (every second
// or so).
func (a *Applier) Draining() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, rss := range a.draining {
		n += len(rss)
	}
	return n
}

// ProcessDraining deletes the draining real servers that have no
// connection left or whose deadline has passed, reading the connection
// counts of each virtual server with draining real servers (one
// destination dump each). Errors are joined; what failed is tried again by
// the next call.
func (a *Applier) ProcessDraining() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.draining) == 0 {
		return nil
	}
	now := a.now()
	var errs []error
	var ops []Op
	target := map[VSKey]*VirtualServer{}
	for _, key := range slices.SortedFunc(maps.Keys(a.draining), VSKey.Compare) {
		rss := a.draining[key]
		have := a.observed[key]
		if have == nil || a.desired[key] == nil {
			// Gone, or going with all its real servers at the next apply.
			delete(a.draining, key)
			continue
		}
		stats, err := a.ipvs.Destinations(key)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", listDestinationsCmd(key), err))
			continue
		}
		next := have
		for _, rk := range slices.SortedFunc(maps.Keys(rss), RSKey.Compare) {
			i := slices.IndexFunc(stats, func(d DestStats) bool { return d.Key == rk })
			if i < 0 {
				// Deleted behind our back: nothing left to do.
				delete(rss, rk)
				have = withoutRealServer(have, rk)
				next = withoutRealServer(next, rk)
				continue
			}
			st := stats[i]
			var reason string
			switch {
			case st.Conns() == 0:
				reason = "no connection left"
			case !now.Before(rss[rk]):
				reason = "graceful termination timeout"
			default:
				continue
			}
			klog.V(2).InfoS("Deleting drained real server", "virtualServer", have.String(), "realServer", rk.String(),
				"reason", reason, "activeConns", st.ActiveConns, "inactiveConns", st.InactiveConns)
			ops = append(ops, Op{Kind: OpDeleteDestination, VS: have, RS: st.RealServer})
			next = withoutRealServer(next, rk)
		}
		a.observed[key] = have
		target[key] = next
		if len(rss) == 0 {
			delete(a.draining, key)
		}
	}
	ok, err := a.execute(ops, target)
	for i, op := range ops {
		if ok[i] {
			a.forgetDraining(op.VS.Key, op.RS.Key)
		}
	}
	return errors.Join(append(errs, err)...)
}

// diff is Diff with the applier's rules on top:
//
//   - virtual servers on excluded addresses that want does not have are left
//     alone (removed from obs and from the memory, they are not ours), and
//     excluded addresses want does not bind stay bound;
//   - draining real servers are wanted at weight 0, unless want has them
//     again (Diff then restores their weight) or the kernel no longer has
//     them; those of a virtual server that goes are forgotten (it is deleted
//     at once);
//   - real servers that are no longer wanted are drained rather than
//     deleted, when they should (see drainRetired).
//
// obs is the caller's to modify; want is not modified. It returns the ops
// and the virtual servers they lead to: want's, plus the draining real
// servers.
func (a *Applier) diff(obs, want *State) ([]Op, map[VSKey]*VirtualServer) {
	t := targets{m: want.VirtualServers}
	if a.excluded != nil {
		for key := range obs.VirtualServers {
			if t.m[key] == nil && a.excluded(key.Addr) {
				delete(obs.VirtualServers, key)
				delete(a.observed, key)
				delete(a.draining, key)
			}
		}
		obs.Addresses = a.keepExcludedAddrs(obs.Addresses, want.Addresses)
	}
	for key, rss := range a.draining {
		have := obs.VirtualServers[key]
		if have == nil {
			continue // not part of this apply
		}
		w := t.m[key]
		if w == nil {
			delete(a.draining, key)
			continue
		}
		vs := w
		for rk := range rss {
			if _, back := findRealServer(w.RealServers, rk); back {
				delete(rss, rk)
				continue
			}
			rs, there := findRealServer(have.RealServers, rk)
			if !there {
				delete(rss, rk)
				continue
			}
			rs.Weight = 0
			vs = withRealServer(vs, rs)
		}
		if len(rss) == 0 {
			delete(a.draining, key)
		}
		if vs != w {
			t.set(key, vs)
		}
	}
	ops := Diff(obs, &State{VirtualServers: t.m, Addresses: want.Addresses})
	ops = a.drainRetired(ops, &t)
	return ops, t.m
}

// keepExcludedAddrs drops from have the excluded addresses want does not
// have, so that Diff does not unbind them.
func (a *Applier) keepExcludedAddrs(have, want []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for i, addr := range have {
		if !a.excluded(addr) || slices.Contains(want, addr) {
			if out != nil {
				out = append(out, addr)
			}
			continue
		}
		if out == nil {
			out = append(make([]netip.Addr, 0, len(have)-1), have[:i]...)
		}
	}
	if out == nil {
		return have
	}
	return out
}

// drainRetired turns the deletions of real servers that should drain into
// weight-0 updates (or into nothing when the weight is 0 already, as after
// a restart), and records them as draining, with the weight-0 real server
// in t. The connection counts are read once per virtual server concerned;
// if they cannot be read, the real server drains (ProcessDraining reads
// them again).
func (a *Applier) drainRetired(ops []Op, t *targets) []Op {
	if a.graceTimeout <= 0 {
		return ops
	}
	type counts struct {
		stats []DestStats
		err   error
	}
	read := map[VSKey]counts{}
	deadline := a.now().Add(a.graceTimeout)
	changed := false
	out := ops[:0]
	for _, op := range ops {
		if op.Kind != OpDeleteDestination || op.VS == nil || !drains(op.VS.Key.Proto) || t.m[op.VS.Key] == nil {
			out = append(out, op)
			continue
		}
		key := op.VS.Key
		c, ok := read[key]
		if !ok {
			c.stats, c.err = a.ipvs.Destinations(key)
			read[key] = c
		}
		if c.err == nil {
			i := slices.IndexFunc(c.stats, func(d DestStats) bool { return d.Key == op.RS.Key })
			if i < 0 || c.stats[i].Conns() == 0 {
				out = append(out, op) // idle (or already gone): delete at once
				continue
			}
			klog.V(2).InfoS("Draining real server", "virtualServer", op.VS.String(), "realServer", op.RS.Key.String(),
				"activeConns", c.stats[i].ActiveConns, "inactiveConns", c.stats[i].InactiveConns, "deadline", deadline)
		} else {
			klog.V(2).InfoS("Draining real server whose connections could not be read", "virtualServer", op.VS.String(),
				"realServer", op.RS.Key.String(), "err", c.err, "deadline", deadline)
		}
		changed = true
		if a.draining == nil {
			a.draining = map[VSKey]map[RSKey]time.Time{}
		}
		if a.draining[key] == nil {
			a.draining[key] = map[RSKey]time.Time{}
		}
		a.draining[key][op.RS.Key] = deadline
		zero := op.RS
		zero.Weight = 0
		vs := withRealServer(t.m[key], zero)
		t.set(key, vs)
		// The weight as the applier knows it, so that its memory stays
		// right: 0 already after a restart.
		if op.RS.Weight != 0 {
			out = append(out, Op{Kind: OpUpdateDestination, VS: vs, RS: zero})
		}
	}
	if changed {
		slices.SortFunc(out, compareOps)
	}
	return out
}

func (a *Applier) forgetDraining(key VSKey, rk RSKey) {
	if rss := a.draining[key]; rss != nil {
		delete(rss, rk)
		if len(rss) == 0 {
			delete(a.draining, key)
		}
	}
}

// targets is a map of wanted virtual servers that is copied before its
// first change, since it may be the caller's.
type targets struct {
	m      map[VSKey]*VirtualServer
	copied bool
}

func (t *targets) set(key VSKey, vs *VirtualServer) {
	if !t.copied {
		t.m = maps.Clone(t.m)
		if t.m == nil {
			t.m = map[VSKey]*VirtualServer{}
		}
		t.copied = true
	}
	t.m[key] = vs
}

func findRealServer(rss []RealServer, rk RSKey) (RealServer, bool) {
	if i := slices.IndexFunc(rss, func(r RealServer) bool { return r.Key == rk }); i >= 0 {
		return rss[i], true
	}
	return RealServer{}, false
}

// withRealServer returns a copy of vs with rs added or replaced, keeping
// the real servers sorted (vs is shared and never modified).
func withRealServer(vs *VirtualServer, rs RealServer) *VirtualServer {
	c := *vs
	c.RealServers = applyDestOps(vs.RealServers, []Op{{Kind: OpAddDestination, RS: rs}})
	return &c
}

// withoutRealServer returns a copy of vs without rk.
func withoutRealServer(vs *VirtualServer, rk RSKey) *VirtualServer {
	c := *vs
	c.RealServers = applyDestOps(vs.RealServers, []Op{{Kind: OpDeleteDestination, RS: RealServer{Key: rk}}})
	return &c
}

// listDestinationsCmd is "ipvsadm -Ln -t VIP:PORT".
func listDestinationsCmd(key VSKey) string {
	return string(appendServiceKey([]byte("ipvsadm -Ln "), key))
}
