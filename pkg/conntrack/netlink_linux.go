package conntrack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// maxDumpAttempts bounds the retries of a table dump the kernel reports as
// interrupted (the table changed during the dump), as upstream's
// MaxAttemptsEINTR.
const maxDumpAttempts = 5

// conntrackDeleter is the part of *netlink.Handle the Cleaner uses.
type conntrackDeleter interface {
	ConntrackDeleteFilters(table netlink.ConntrackTableType, family netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error)
}

// netlinkCleaner deletes entries over ctnetlink, in the network namespace
// of the calling thread. It runs no conntrack process.
type netlinkCleaner struct {
	h conntrackDeleter
}

// New returns the Cleaner that works on the kernel's conntrack table over
// netlink (NETLINK_NETFILTER), in the caller's network namespace.
func New() Cleaner {
	// A zero Handle opens a socket per request in the current namespace,
	// as upstream kube-proxy does.
	return &netlinkCleaner{h: &netlink.Handle{}}
}

// DeleteStale makes, for each IP family that a filter has a frontend of,
// one dump of the family's conntrack table and one delete per selected
// entry. In conntrack(8) terms, per family:
//
//	conntrack -L -f ipv4                      # one dump
//	conntrack -D -f ipv4 -p udp --orig-src C --orig-dst F --orig-port-src c --orig-port-dst f
//	                                          # per selected entry, its exact original tuple
//
// where an entry is selected as Filter says: for a live filter, the entries
// `conntrack -L -p udp --orig-dst F --orig-port-dst f` lists whose
// --reply-src/--reply-port-src is not a serving endpoint; for a removed
// filter, those whose --reply-src/--reply-port-src is one of its former
// endpoints (`conntrack -D -p udp --orig-dst F --orig-port-dst f --reply-src
// E --reply-port-src e`).
func (c *netlinkCleaner) DeleteStale(filters []Filter) (int, error) {
	if len(filters) == 0 {
		return 0, nil
	}
	m := compile(filters)
	if klog.V(4).Enabled() {
		for _, d := range m.byDesc {
			klog.InfoS("Deleting stale conntrack entries", "filter", d)
		}
	}
	start := time.Now()
	f := flowFilter{m}
	var total int
	var errs []error
	for _, fam := range []struct {
		on     bool
		family netlink.InetFamily
		name   string
	}{{m.has4, unix.AF_INET, "ipv4"}, {m.has6, unix.AF_INET6, "ipv6"}} {
		if !fam.on {
			continue
		}
		n, err := c.deleteFamily(fam.family, f)
		total += n
		if err != nil {
			errs = append(errs, fmt.Errorf("deleting stale %s conntrack entries (%d deleted): %w", fam.name, n, err))
		}
	}
	klog.V(4).InfoS("Deleted stale conntrack entries", "filters", len(filters), "deleted", total, "elapsed", time.Since(start))
	return total, errors.Join(errs...)
}

// deleteFamily runs one family's dump-and-delete (`conntrack -L -f FAMILY`,
// then `conntrack -D` of each selected entry's exact tuple), again while the kernel
// reports the dump as interrupted: entries already deleted are gone from
// the next dump, so counts add up.
func (c *netlinkCleaner) deleteFamily(family netlink.InetFamily, f flowFilter) (int, error) {
	var total int
	var err error
	for range maxDumpAttempts {
		var n uint
		n, err = c.h.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
		total += int(n)
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) {
			return total, err
		}
	}
	return total, err
}

// flowFilter adapts a matcher to netlink's CustomConntrackFilter.
type flowFilter struct {
	m *matcher
}

var _ netlink.CustomConntrackFilter = flowFilter{}

// MatchConntrackFlow is called for every entry of the dump.
func (f flowFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	e := entryOf(flow)
	if !f.m.match(e) {
		return false
	}
	klog.V(6).InfoS("Deleting conntrack entry", "entry", e)
	return true
}

func entryOf(flow *netlink.ConntrackFlow) Entry {
	return Entry{
		Protocol: flow.Forward.Protocol,
		OrigSrc:  addrPort(flow.Forward.SrcIP, flow.Forward.SrcPort),
		OrigDst:  addrPort(flow.Forward.DstIP, flow.Forward.DstPort),
		ReplySrc: addrPort(flow.Reverse.SrcIP, flow.Reverse.SrcPort),
		ReplyDst: addrPort(flow.Reverse.DstIP, flow.Reverse.DstPort),
	}
}

// addrPort converts a netlink address; an unparsable one is the zero
// AddrPort, which no filter has.
func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), port)
}
