package conntrack

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// Cleaner deletes conntrack entries.
type Cleaner interface {
	// DeleteStale deletes the entries that any of filters selects and
	// returns how many it deleted. Entries no filter selects are never
	// touched. Nothing is done for no filters.
	DeleteStale(filters []Filter) (int, error)
}

// IANA protocol numbers, as in conntrack entries.
const (
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// ProtoNumber returns the protocol number of an API protocol, 0 if unknown.
func ProtoNumber(p v1.Protocol) uint8 {
	switch p {
	case v1.ProtocolTCP:
		return ProtoTCP
	case v1.ProtocolUDP:
		return ProtoUDP
	case v1.ProtocolSCTP:
		return ProtoSCTP
	}
	return 0
}

// Entry is the part of a conntrack entry the filters look at: the original
// tuple (client → frontend) and the reply tuple (backend → client, or
// frontend → client when the flow was not DNATed).
type Entry struct {
	Protocol uint8
	OrigSrc  netip.AddrPort
	OrigDst  netip.AddrPort
	ReplySrc netip.AddrPort
	ReplyDst netip.AddrPort
}

func (e Entry) String() string {
	return fmt.Sprintf("proto=%d src=%s dst=%s reply-src=%s reply-dst=%s", e.Protocol, e.OrigSrc, e.OrigDst, e.ReplySrc, e.ReplyDst)
}

// matcher is a set of filters compiled for lookups by original destination.
type matcher struct {
	rules  map[matchKey]*rule
	has4   bool
	has6   bool
	byDesc []string // the filters, for logs
}

type matchKey struct {
	proto uint8
	dst   netip.AddrPort
}

type rule struct {
	removed  bool
	backends map[netip.AddrPort]bool
}

// compile merges filters into one matcher. Filters that share a frontend
// are merged so as to delete less: live filters keep the union of their
// serving backends, removed filters target the union of their backends, and
// a live filter wins over a removed one (the frontend exists, so only its
// own rule applies).
func compile(filters []Filter) *matcher {
	m := &matcher{rules: make(map[matchKey]*rule)}
	for pass := range 2 {
		removed := pass == 1
		for _, f := range filters {
			proto := ProtoNumber(f.Protocol)
			if f.Removed != removed || proto == 0 {
				continue
			}
			m.byDesc = append(m.byDesc, f.String())
			for _, fe := range f.Frontends {
				fe = netip.AddrPortFrom(fe.Addr().Unmap(), fe.Port())
				k := matchKey{proto, fe}
				r := m.rules[k]
				if r == nil {
					r = &rule{removed: removed, backends: make(map[netip.AddrPort]bool)}
					m.rules[k] = r
				} else if r.removed != removed {
					continue // a live rule is already there
				}
				for _, be := range f.Backends {
					r.backends[netip.AddrPortFrom(be.Addr().Unmap(), be.Port())] = true
				}
				m.has4 = m.has4 || fe.Addr().Is4()
				m.has6 = m.has6 || fe.Addr().Is6()
			}
		}
	}
	return m
}

// match reports whether the filters select e.
func (m *matcher) match(e Entry) bool {
	r := m.rules[matchKey{e.Protocol, unmapAP(e.OrigDst)}]
	if r == nil {
		return false
	}
	// The reply source is where the flow was DNATed to: a backend, or
	// the frontend itself when there was no endpoint to send it to.
	return r.backends[unmapAP(e.ReplySrc)] == r.removed
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
