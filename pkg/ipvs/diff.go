package ipvs

import (
	"net/netip"
	"slices"
	"strconv"
)

// OpKind is one kind of kernel change. The values are in execution order:
// everything is added before anything is removed, and an address is bound
// before the virtual servers on it are added (some setups refuse a virtual
// server whose address is not local) and unbound after they are deleted.
type OpKind uint8

// Kinds of op, in the order they are applied.
const (
	OpAddAddress OpKind = iota + 1
	OpAddService
	OpUpdateService
	OpAddDestination
	OpUpdateDestination
	OpDeleteDestination
	OpDeleteService
	OpDeleteAddress
)

func (k OpKind) String() string {
	switch k {
	case OpAddAddress:
		return "add-address"
	case OpAddService:
		return "add-service"
	case OpUpdateService:
		return "update-service"
	case OpAddDestination:
		return "add-destination"
	case OpUpdateDestination:
		return "update-destination"
	case OpDeleteDestination:
		return "delete-destination"
	case OpDeleteService:
		return "delete-service"
	case OpDeleteAddress:
		return "delete-address"
	}
	return "op(" + strconv.Itoa(int(k)) + ")"
}

// Op is one kernel change.
type Op struct {
	Kind OpKind
	// VS is the virtual server concerned, for every kind but the address
	// ones: the wanted one for adds and updates, the observed one for
	// deletes.
	VS *VirtualServer
	// RS is the real server, for destination kinds.
	RS RealServer
	// Addr is the address, for address kinds.
	Addr netip.Addr
}

// String gives the command-line equivalent, e.g.
// "ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1".
func (o Op) String() string {
	var b []byte
	switch o.Kind {
	case OpAddAddress, OpDeleteAddress:
		b = append(b, "ip addr "...)
		if o.Kind == OpAddAddress {
			b = append(b, "add "...)
		} else {
			b = append(b, "del "...)
		}
		b = appendPrefix(b, o.Addr)
		b = append(b, " dev "+DummyLinkName...)
		return string(b)
	}
	if o.VS == nil {
		return o.Kind.String() + " <nil>"
	}
	b = append(b, "ipvsadm "...)
	switch o.Kind {
	case OpAddService:
		b = appendServiceRule(b, "-A", o.VS)
	case OpUpdateService:
		b = appendServiceRule(b, "-E", o.VS)
	case OpDeleteService:
		b = append(b, "-D "...)
		b = appendServiceKey(b, o.VS.Key)
	case OpAddDestination:
		b = appendDestRule(b, "-a", o.VS.Key, o.RS)
	case OpUpdateDestination:
		b = appendDestRule(b, "-e", o.VS.Key, o.RS)
	case OpDeleteDestination:
		b = appendDestKey(b, "-d", o.VS.Key, o.RS.Key)
	default:
		return o.Kind.String()
	}
	return string(b)
}

// compareOps orders ops by kind, then virtual server, real server, address.
func compareOps(a, b Op) int {
	if a.Kind != b.Kind {
		return int(a.Kind) - int(b.Kind)
	}
	if a.VS != nil && b.VS != nil {
		if c := a.VS.Key.Compare(b.VS.Key); c != 0 {
			return c
		}
		return a.RS.Key.Compare(b.RS.Key)
	}
	return a.Addr.Compare(b.Addr)
}

// Diff returns the ops that turn observed into desired, sorted in execution
// order (see OpKind). It is pure. Every virtual server in observed is
// treated as owned: filtering foreign ones is the caller's job.
func Diff(observed, desired *State) []Op {
	var ops []Op
	var obsVS, wantVS map[VSKey]*VirtualServer
	var obsAddrs, wantAddrs []netip.Addr
	if observed != nil {
		obsVS, obsAddrs = observed.VirtualServers, observed.Addresses
	}
	if desired != nil {
		wantVS, wantAddrs = desired.VirtualServers, desired.Addresses
	}

	ops = diffAddrs(ops, sortedIfNeeded(obsAddrs), sortedIfNeeded(wantAddrs))
	for key, want := range wantVS {
		if want == nil {
			continue
		}
		have := obsVS[key]
		if have == nil {
			ops = append(ops, Op{Kind: OpAddService, VS: want})
			for _, rs := range want.RealServers {
				ops = append(ops, Op{Kind: OpAddDestination, VS: want, RS: rs})
			}
			continue
		}
		if !have.sameConfig(want) {
			ops = append(ops, Op{Kind: OpUpdateService, VS: want})
		}
		ops = diffRealServers(ops, want, have.RealServers, want.RealServers)
	}
	for key, have := range obsVS {
		// The kernel drops the destinations with their service.
		if have != nil && wantVS[key] == nil {
			ops = append(ops, Op{Kind: OpDeleteService, VS: have})
		}
	}
	slices.SortFunc(ops, compareOps)
	return ops
}

// diffAddrs merges two sorted address lists.
func diffAddrs(ops []Op, have, want []netip.Addr) []Op {
	i, j := 0, 0
	for i < len(have) || j < len(want) {
		switch {
		case j == len(want) || (i < len(have) && have[i].Less(want[j])):
			ops = append(ops, Op{Kind: OpDeleteAddress, Addr: have[i]})
			i++
		case i == len(have) || want[j].Less(have[i]):
			ops = append(ops, Op{Kind: OpAddAddress, Addr: want[j]})
			j++
		default:
			i++
			j++
		}
	}
	return ops
}

// diffRealServers merges the sorted destinations of one virtual server.
func diffRealServers(ops []Op, vs *VirtualServer, have, want []RealServer) []Op {
	have, want = sortedRSIfNeeded(have), sortedRSIfNeeded(want)
	i, j := 0, 0
	for i < len(have) || j < len(want) {
		switch {
		case j == len(want) || (i < len(have) && have[i].Key.Compare(want[j].Key) < 0):
			ops = append(ops, retireRealServer(vs, have[i]))
			i++
		case i == len(have) || want[j].Key.Compare(have[i].Key) < 0:
			ops = append(ops, Op{Kind: OpAddDestination, VS: vs, RS: want[j]})
			j++
		default:
			if have[i] != want[j] {
				ops = append(ops, Op{Kind: OpUpdateDestination, VS: vs, RS: want[j]})
			}
			i++
			j++
		}
	}
	return ops
}

// retireRealServer removes a real server that is no longer wanted. Diff is
// pure, so it always deletes; the Applier turns the deletion into a drain
// (weight 0, deleted later) when the real server still has connections,
// since that needs the kernel's counts (see graceful.go). The op carries
// the observed real server, whose weight the applier needs.
func retireRealServer(vs *VirtualServer, rs RealServer) Op {
	return Op{Kind: OpDeleteDestination, VS: vs, RS: rs}
}

// sortedIfNeeded returns addrs sorted and without duplicates, copying only
// when they are not already (duplicates would confuse the merge).
func sortedIfNeeded(addrs []netip.Addr) []netip.Addr {
	if strictlySorted(addrs, netip.Addr.Compare) {
		return addrs
	}
	return sortedAddrs(addrs)
}

func sortedRSIfNeeded(rs []RealServer) []RealServer {
	if strictlySorted(rs, compareRS) {
		return rs
	}
	rs = slices.Clone(rs)
	slices.SortStableFunc(rs, compareRS)
	return slices.CompactFunc(rs, func(a, b RealServer) bool { return a.Key == b.Key })
}

func strictlySorted[T any](s []T, cmp func(a, b T) int) bool {
	for i := 1; i < len(s); i++ {
		if cmp(s[i-1], s[i]) >= 0 {
			return false
		}
	}
	return true
}
