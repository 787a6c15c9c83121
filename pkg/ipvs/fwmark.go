package ipvs

import (
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Firewall-mark virtual servers for externalTrafficPolicy: Local.
//
// The external virtual servers (load-balancer IPs, external IPs, node
// ports) of such a Service balance to this node's endpoints only. Upstream's
// iptables and nftables modes apply that policy to traffic from outside the
// cluster only: traffic from the cluster's pods and from the node itself
// goes to every endpoint. IPVS looks firewall-mark virtual servers up
// before address ones (ip_vs_service_find), so a firewall-mark virtual
// server per Service port and family, balancing to the cluster endpoints,
// takes the packets to those addresses that iptables marked for it: the
// ipset KUBE-EXTERNAL-LOCAL-MARK maps each external address to its mark
// (pkg/iptables), and its rules in mangle PREROUTING (pods) and OUTPUT
// (the node) set the mark.
//
// IPVS compares the whole packet mark with the virtual server's. The node's
// own packets also carry the masquerade mark (MasqueradeMark, set by the
// same mangle rules, so that they leave with the node's address as
// upstream's "masquerade LOCAL traffic" rule does), so each port and family
// has a second firewall-mark virtual server, on mark|MasqueradeMark. A
// packet with other mark bits set by someone else matches neither and gets
// the address's virtual server, as before.

// FWMarkMask is the part of the packet mark these virtual servers use: bits
// 16 to 29. It keeps clear of the masquerade (0x4000) and drop (0x8000)
// marks, and no mark in it equals a scheduler probe's (probeMarks).
const FWMarkMask uint32 = 0x3fff0000

const fwMarkShift = 16

// MasqueradeMark is iptables' masquerade mark (KUBE-MARK-MASQ, upstream's
// default --iptables-masquerade-bit 14), which the node's own packets to a
// marked address carry besides the firewall mark.
const MasqueradeMark uint32 = 0x4000

// fwMarkValues is how many marks FWMarkMask holds (mark 0 is not one).
const fwMarkValues = FWMarkMask>>fwMarkShift - 1

// MarkOwner is the Service port a firewall mark belongs to.
type MarkOwner struct {
	Service servicecache.ServiceKey
	Port    string
	Proto   Proto
}

// ServiceMark is the firewall mark a Service port wants: a hash of its
// identity, so that it is the same after a restart with nothing to read
// back. When another port already has it (Config.HeldMarks, or a port
// planned before in the same run), the port takes the next free one
// (markFor). Should two ports still end up on one mark (two incremental
// plans), the virtual server is settled like an address (the older
// Service keeps it, the other gets a Problem, and traffic to its external
// addresses from inside the cluster is not marked: it sees the Local
// policy, as before) until the next full Plan moves it.
func ServiceMark(svc servicecache.ServiceKey, portName string, proto Proto) uint32 {
	h := fnv.New32a()
	h.Write([]byte(svc.Namespace))
	h.Write([]byte{0})
	h.Write([]byte(svc.Name))
	h.Write([]byte{0})
	h.Write([]byte(portName))
	h.Write([]byte{0, byte(proto)})
	return (h.Sum32()%fwMarkValues + 1) << fwMarkShift
}

// nextMark is the mark after m in FWMarkMask, wrapping around.
func nextMark(m uint32) uint32 {
	v := m>>fwMarkShift + 1
	if v > fwMarkValues {
		v = 1
	}
	return v << fwMarkShift
}

// markFor is the mark of one Service port: the one it holds
// (Config.HeldMarks) or else the first free one from ServiceMark on. It
// records the choice, so that the next port of the run avoids it.
func (p *planner) markFor(o MarkOwner) uint32 {
	if p.markUsers == nil {
		p.markUsers = make(map[uint32]MarkOwner, len(p.heldMarks)+1)
		for owner, m := range p.heldMarks {
			p.markUsers[m] = owner
		}
	}
	if m, ok := p.heldMarks[o]; ok && OwnedMark(m) {
		if user, taken := p.markUsers[m]; !taken || user == o {
			p.markUsers[m] = o
			return m
		}
	}
	m := ServiceMark(o.Service, o.Port, o.Proto)
	for range fwMarkValues {
		user, taken := p.markUsers[m]
		if !taken || user == o {
			break
		}
		m = nextMark(m)
	}
	p.markUsers[m] = o
	return m
}

// OwnedMark reports whether a firewall-mark virtual server on mark is one
// of ours: a mark inside FWMarkMask, with or without MasqueradeMark.
func OwnedMark(mark uint32) bool {
	base := mark &^ MasqueradeMark
	return base != 0 && base&^FWMarkMask == 0
}

// nodeMark reports whether mark is the node's variant (MasqueradeMark set).
func nodeMark(mark uint32) bool { return mark&MasqueradeMark != 0 }

// ownedKey reports whether key is one of our firewall-mark virtual servers.
func ownedKey(key VSKey) bool { return key.FWMark != 0 && OwnedMark(key.FWMark) }

// FWMarkKey is the key of the firewall-mark virtual server of mark, for
// IPv4 or IPv6.
func FWMarkKey(v4 bool, mark uint32) VSKey {
	addr := netip.IPv6Unspecified()
	if v4 {
		addr = netip.IPv4Unspecified()
	}
	return VSKey{Addr: addr, FWMark: mark}
}

// MarkEntry says: traffic from inside the cluster to Key (an external
// virtual server) gets Mark.
type MarkEntry struct {
	Key  VSKey
	Mark uint32
}

// Compare orders entries by key.
func (e MarkEntry) Compare(o MarkEntry) int { return e.Key.Compare(o.Key) }

// markEntries lists, sorted, what the firewall-mark virtual servers fw of
// the state vss match.
func markEntries(fw, vss map[VSKey]*VirtualServer) []MarkEntry {
	var out []MarkEntry
	for key, vs := range fw {
		if vs == nil || key.FWMark == 0 || nodeMark(key.FWMark) {
			continue // the node's variant matches the same addresses
		}
		for _, m := range vs.Match {
			// An external virtual server another Service holds is not
			// this Service's to redirect.
			if ext := vss[m]; ext != nil && ext.Service == vs.Service {
				out = append(out, MarkEntry{Key: m, Mark: key.FWMark})
			}
		}
	}
	slices.SortFunc(out, MarkEntry.Compare)
	return out
}

// MarkEntries lists, sorted, the external virtual servers whose traffic from
// inside the cluster is marked for a firewall-mark virtual server of d.
func (d *Desired) MarkEntries() []MarkEntry {
	if d == nil {
		return nil
	}
	return markEntries(d.VirtualServers, d.VirtualServers)
}

// MarkEntries is Desired.MarkEntries for what the applier holds: the last
// Reconcile's plan with every ApplyServices since.
func (a *Applier) MarkEntries() []MarkEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	return markEntries(a.fwmarks, a.desired)
}

// HeldMarks are the marks of the firewall-mark virtual servers the applier
// holds, by Service port: Config.HeldMarks for the next plan, which keeps
// them.
func (a *Applier) HeldMarks() map[MarkOwner]uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[MarkOwner]uint32{}
	for key, vs := range a.fwmarks {
		if vs == nil || len(vs.Match) == 0 || nodeMark(key.FWMark) {
			continue
		}
		out[MarkOwner{Service: vs.Service, Port: vs.PortName, Proto: vs.Match[0].Proto}] = key.FWMark
	}
	return out
}

// addFWMark adds, for each family of the port just built (from index
// start of b.out), the firewall-mark virtual server matching its external
// virtual servers, when the selection asks for one.
func (b *vsBuilder) addFWMark(p *planner, start int) {
	if b.sel.fwmark[0] == nil && b.sel.fwmark[1] == nil {
		return
	}
	mark := p.markFor(MarkOwner{Service: b.tmpl.Service, Port: b.tmpl.PortName, Proto: b.tmpl.Key.Proto})
	for fam := range 2 {
		rss := b.sel.fwmark[fam]
		if rss == nil {
			continue
		}
		var match []VSKey
		for _, vs := range b.out[start:] {
			if vs.Kind != KindClusterIP && famIndex(vs.Key.Addr.Is4()) == fam {
				match = append(match, vs.Key)
			}
		}
		if len(match) == 0 {
			continue
		}
		// One for pods, one for the node's own (masqueraded) packets.
		for _, m := range []uint32{mark, mark | MasqueradeMark} {
			vs := b.tmpl
			vs.Key = FWMarkKey(fam == 0, m)
			vs.Kind = KindFWMark
			vs.RealServers = rss
			vs.Match = match
			b.backing = append(b.backing, vs)
			b.out = append(b.out, &b.backing[len(b.backing)-1])
		}
	}
}
