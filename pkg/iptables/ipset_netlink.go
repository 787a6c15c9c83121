package iptables

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nldump"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// NetlinkIPSet is the real IPSet: it talks to the kernel over netlink, with
// no `ipset` process. It works in the network namespace that was current
// on the calling thread when it was created, whatever thread calls it later.
type NetlinkIPSet struct {
	mu  sync.Mutex // one request at a time per socket; guards revisions
	h   *netlink.Handle
	own ipsetSocket // for the messages the library cannot send

	revisions map[revisionKey]uint8
}

type revisionKey struct {
	typ    SetType
	family uint8
}

var _ IPSet = (*NetlinkIPSet)(nil)

// socketTimeout bounds each netlink round trip so a wedged kernel call
// fails instead of hanging the sync loop.
const socketTimeout = 30 * time.Second

// NewNetlinkIPSet opens two NETLINK_NETFILTER sockets in the current
// network namespace (one for the library, one for our own messages).
func NewNetlinkIPSet() (*NetlinkIPSet, error) {
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening netlink socket for ipset: %w", err)
	}
	if err := h.SetSocketTimeout(socketTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("setting netlink socket timeout: %w", err)
	}
	conn, err := nldump.Open(unix.NETLINK_NETFILTER, nil, socketTimeout)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("opening netlink socket for ipset: %w", err)
	}
	return &NetlinkIPSet{
		h:         h,
		own:       ipsetSocket{conn: conn},
		revisions: map[revisionKey]uint8{},
	}, nil
}

// Close releases the sockets.
func (s *NetlinkIPSet) Close() {
	s.h.Close()
	s.own.conn.Close()
}

// preferredRevision caps the revision we create each type at: the first
// with bucketsize/initval (kernel 5.11, ipset 7.10). That is what upstream's
// ipset tool creates on current systems, while older `ipset` binaries an
// operator may have can still list the set (a revision unknown to the tool
// makes `ipset list` fail). Older kernels get their newest revision.
var preferredRevision = map[SetType]uint8{
	HashIP:        5,
	HashIPPort:    6,
	HashIPPortIP:  6,
	HashIPPortNet: 8,
	BitmapPort:    3,
}

func (s *NetlinkIPSet) revision(typ SetType, family uint8) (uint8, error) {
	k := revisionKey{typ, family}
	if r, ok := s.revisions[k]; ok {
		return r, nil
	}
	minRev, maxRev, err := s.own.typeRevisions(typ, family)
	if err != nil {
		return 0, fmt.Errorf("kernel support for set type %s: %w", typ, err)
	}
	r := min(maxRev, preferredRevision[typ])
	if r < minRev {
		r = minRev
	}
	s.revisions[k] = r
	return r, nil
}

func familyNumber(spec SetSpec) uint8 {
	if spec.Type == BitmapPort {
		return unix.AF_UNSPEC // bitmap:port has no family
	}
	if spec.Family == IPv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// EnsureSet: ipset create NAME TYPE family F hashsize 1024 maxelem N
// [skbinfo] -exist (bitmap:port: range FROM-TO). The library sends no hash size; the
// kernel's default is 1024, upstream's value.
func (s *NetlinkIPSet) EnsureSet(spec SetSpec) error {
	if err := checkOwnedSet(spec.Name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fam := familyNumber(spec)
	// The type query wants a real family even for family-less types.
	queryFam := fam
	if queryFam == unix.AF_UNSPEC {
		queryFam = unix.AF_INET
	}
	rev, err := s.revision(spec.Type, queryFam)
	if err != nil {
		return fmt.Errorf("ipset %s: %w", spec.CreateArgs(), err)
	}
	// Replace=true leaves NLM_F_EXCL unset: the kernel then accepts an
	// existing set of the same type and options, like -exist.
	opts := netlink.IpsetCreateOptions{Replace: true, Revision: rev, Skbinfo: spec.SkbInfo}
	if spec.Type == BitmapPort {
		opts.PortFrom, opts.PortTo = spec.PortFrom, spec.PortTo
	} else {
		opts.Family = fam
		opts.MaxElements = spec.MaxElem
	}
	if err := s.h.IpsetCreate(spec.Name, string(spec.Type), opts); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, nl.IPSetError(nl.IPSET_ERR_EXIST)) {
			return fmt.Errorf("ipset %s -exist: a set of that name exists with another type or options "+
				"(destroy it once rules no longer use it): %w", spec.CreateArgs(), err)
		}
		return fmt.Errorf("ipset %s -exist: %w", spec.CreateArgs(), err)
	}
	return nil
}

// ListEntries: ipset list NAME
func (s *NetlinkIPSet) ListEntries(spec SetSpec) ([]Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	entries, err := s.own.list(spec)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("ipset list %s: set does not exist: %w", spec.Name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("ipset list %s: %w", spec.Name, err)
	}
	return entries, nil
}

// AddEntries: ipset add NAME ENTRY -exist, one netlink request per entry on
// a kept-open socket (no process, no re-listing).
func (s *NetlinkIPSet) AddEntries(spec SetSpec, entries []Entry) error {
	return s.addDel(nl.IPSET_CMD_ADD, "add", spec, entries)
}

// DelEntries: ipset del NAME ENTRY -exist (by key: an skbmark is not sent)
func (s *NetlinkIPSet) DelEntries(spec SetSpec, entries []Entry) error {
	return s.addDel(nl.IPSET_CMD_DEL, "del", spec, entries)
}

func (s *NetlinkIPSet) addDel(cmd int, verb string, spec SetSpec, entries []Entry) error {
	if err := checkOwnedSet(spec.Name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var full *SetFullError
	for _, e := range entries {
		if err := spec.Validate(e); err != nil {
			return fmt.Errorf("ipset %s %s %s: %w", verb, spec.Name, e, err)
		}
		var err error
		if spec.Type == BitmapPort {
			err = s.own.bitmapPort(cmd, spec.Name, e.Port)
		} else if cmd == nl.IPSET_CMD_ADD && e.SkbMarkMask != 0 {
			err = s.own.addSkbMark(spec.Name, e)
		} else {
			ne := libEntry(e)
			if cmd == nl.IPSET_CMD_ADD {
				err = s.h.IpsetAdd(spec.Name, ne)
			} else {
				err = s.h.IpsetDel(spec.Name, ne)
			}
		}
		if err != nil && cmd == nl.IPSET_CMD_ADD && spec.Type != BitmapPort && errors.Is(err, nl.IPSetError(ipsetErrHashFull)) {
			// Full: the others may still be present already (-exist).
			if full == nil {
				full = &SetFullError{Set: spec.Name, Err: fmt.Errorf("ipset %s %s %s -exist: %w", verb, spec.Name, e, err)}
			}
			full.Refused = append(full.Refused, e)
			continue
		}
		if err != nil {
			return fmt.Errorf("ipset %s %s %s -exist: %w", verb, spec.Name, e, err)
		}
	}
	if full != nil {
		return full
	}
	return nil
}

// ipsetErrHashFull is IPSET_ERR_HASH_FULL (linux ip_set_hash.h), the
// first type-specific error of hash types: the set holds maxelem entries.
const ipsetErrHashFull = nl.IPSET_ERR_TYPE_SPECIFIC

// libEntry converts a validated hash-type entry for the library. Replace
// leaves NLM_F_EXCL unset, which makes add/del behave like -exist.
func libEntry(e Entry) *netlink.IPSetEntry {
	ne := &netlink.IPSetEntry{IP: e.IP.AsSlice(), Replace: true}
	if e.Proto != 0 || e.Port != 0 {
		proto, port := uint8(e.Proto), e.Port
		ne.Protocol, ne.Port = &proto, &port
	}
	switch {
	case e.IP2.IsValid():
		ne.IP2 = e.IP2.AsSlice()
	case e.Net.IsValid():
		ne.IP2 = e.Net.Addr().AsSlice()
		ne.CIDR2 = uint8(e.Net.Bits())
	}
	return ne
}

// DestroySet: ipset destroy NAME (only ours; missing is fine).
func (s *NetlinkIPSet) DestroySet(name string) error {
	if err := checkOwnedSet(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.h.IpsetDestroy(name); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("ipset destroy %s: %w", name, err)
	}
	return nil
}
