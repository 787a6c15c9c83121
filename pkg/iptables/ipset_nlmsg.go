package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink/nl"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nlattr"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nldump"
	"golang.org/x/sys/unix"
)

// This file holds the few ipset netlink messages we build ourselves because
// github.com/vishvananda/netlink v1.3.1 cannot do them:
//
//   - IPSET_CMD_TYPE (the kernel's supported revisions of a set type): the
//     library has no call for it and, by default, creates sets at the
//     oldest revision it knows, unlike the ipset tool upstream uses.
//   - ADD/DEL on bitmap:port: the library always sends a protocol attribute
//     with a port, which the kernel's strict policy for bitmap:port rejects
//     ("invalid protocol").
//   - ADD with an skbmark (`ipset add NAME IP,PROTO:PORT skbmark M/MASK`):
//     the library has no attribute for it.
//   - LIST: the library logs every attribute it does not know (the
//     bucketsize and initval of current hash sets) through the standard log
//     package on each call, and returns net.IP values we would convert
//     again. We parse the dump into Entry directly.

// ipsetSocket sends our own ipset requests on one netlink socket, whose
// receive buffer serves every listing of every resync.
type ipsetSocket struct {
	conn *nldump.Conn
	// sizeHint is each set's last member count: a listing allocates its
	// result once, not by doubling.
	sizeHint map[string]int
}

func (s *ipsetSocket) request(cmd int, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(cmd|(unix.NFNL_SUBSYS_IPSET<<8), flags)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(unix.AF_NETLINK), Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	return req
}

// ipsetErr turns ipset's private errnos into the library's error type, as
// the library does for its own calls.
func ipsetErr(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) && int(errno) >= nl.IPSET_ERR_PRIVATE {
		return nl.IPSetError(uintptr(errno))
	}
	return err
}

// typeRevisions asks the kernel which revisions of a set type it supports:
// `ipset` does this before every create.
func (s *ipsetSocket) typeRevisions(typ SetType, family uint8) (minRev, maxRev uint8, err error) {
	req := s.request(nl.IPSET_CMD_TYPE, unix.NLM_F_REQUEST)
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_TYPENAME, nl.ZeroTerminated(string(typ))))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_FAMILY, nl.Uint8Attr(family)))
	found := false
	err = s.conn.Execute(req, 0, func(msg []byte) error {
		if len(msg) < nl.SizeofNfgenmsg {
			return nil
		}
		it := nlattr.Iter(msg[nl.SizeofNfgenmsg:])
		for it.Next() {
			switch v := it.Value(); {
			case it.Type() == nl.IPSET_ATTR_REVISION && len(v) >= 1:
				maxRev, found = v[0], true
			case it.Type() == nl.IPSET_ATTR_REVISION_MIN && len(v) >= 1:
				minRev = v[0]
			}
		}
		return nil // a malformed tail leaves what was read
	})
	if err != nil {
		return 0, 0, ipsetErr(err)
	}
	if !found {
		return 0, 0, fmt.Errorf("kernel reply for set type %s has no revision", typ)
	}
	return minRev, maxRev, nil
}

// bitmapPort adds or deletes one port of a bitmap:port set, without the
// NLM_F_EXCL flag, i.e. `ipset add|del NAME PORT -exist`.
func (s *ipsetSocket) bitmapPort(cmd int, set string, port uint16) error {
	req := s.request(cmd, unix.NLM_F_ACK)
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(set)))
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PORT|int(nl.NLA_F_NET_BYTEORDER), binary.BigEndian.AppendUint16(nil, port)))
	req.AddData(data)
	return ipsetErr(s.conn.Execute(req, 0, func([]byte) error { return nil }))
}

// addSkbMark adds one hash:ip,port entry with its skbmark, without the
// NLM_F_EXCL flag, i.e. `ipset add NAME IP,PROTO:PORT skbmark M/MASK
// -exist`: the kernel then rewrites the mark of an entry already there.
func (s *ipsetSocket) addSkbMark(set string, e Entry) error {
	req := s.request(nl.IPSET_CMD_ADD, unix.NLM_F_ACK)
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(set)))
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	appendSkbMarkData(data, e)
	req.AddData(data)
	return ipsetErr(s.conn.Execute(req, 0, func([]byte) error { return nil }))
}

// appendSkbMarkData fills IPSET_ATTR_DATA for addSkbMark: the address,
// port and protocol, and IPSET_ATTR_SKBMARK, the mark in the high and the
// mask in the low 32 bits of a big-endian u64.
func appendSkbMarkData(data *nl.RtAttr, e Entry) {
	ip := nl.NewRtAttr(nl.IPSET_ATTR_IP|int(nl.NLA_F_NESTED), nil)
	if e.IP.Is4() {
		a := e.IP.As4()
		ip.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_IPADDR_IPV4|int(nl.NLA_F_NET_BYTEORDER), a[:]))
	} else {
		a := e.IP.As16()
		ip.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_IPADDR_IPV6|int(nl.NLA_F_NET_BYTEORDER), a[:]))
	}
	data.AddChild(ip)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PORT|int(nl.NLA_F_NET_BYTEORDER), binary.BigEndian.AppendUint16(nil, e.Port)))
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_PROTO, []byte{uint8(e.Proto)}))
	mark := uint64(e.SkbMark)<<32 | uint64(e.SkbMarkMask)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_SKBMARK|int(nl.NLA_F_NET_BYTEORDER), binary.BigEndian.AppendUint64(nil, mark)))
}

// list dumps a set's members (`ipset list NAME`). The kernel may split a
// big set over several messages; each carries an ADT attribute with entries.
func (s *ipsetSocket) list(spec SetSpec) ([]Entry, error) {
	req := s.request(nl.IPSET_CMD_LIST, nl.GetIpsetFlags(nl.IPSET_CMD_LIST))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(spec.Name)))
	entries := make([]Entry, 0, s.sizeHint[spec.Name])
	var parseErr error
	err := s.conn.Execute(req, 0, func(msg []byte) error {
		if parseErr != nil || len(msg) < nl.SizeofNfgenmsg {
			return nil // after a bad message, the rest is only drained
		}
		entries, parseErr = appendListed(entries, spec.Type, msg[nl.SizeofNfgenmsg:])
		return nil
	})
	if err != nil {
		return nil, ipsetErr(err)
	}
	if parseErr != nil {
		return nil, fmt.Errorf("parsing members of %s: %w", spec.Name, parseErr)
	}
	if s.sizeHint == nil {
		s.sizeHint = map[string]int{}
	}
	s.sizeHint[spec.Name] = len(entries)
	if len(entries) == 0 {
		return nil, nil
	}
	return entries, nil
}

// appendListed appends the members in the attributes of one list message
// (IPSET_ATTR_ADT: IPSET_ATTR_DATA...).
func appendListed(entries []Entry, typ SetType, attrs []byte) ([]Entry, error) {
	it := nlattr.Iter(attrs)
	for it.Next() {
		if it.Type() != nl.IPSET_ATTR_ADT {
			continue
		}
		adt := nlattr.Iter(it.Value())
		for adt.Next() {
			if adt.Type() != nl.IPSET_ATTR_DATA {
				continue
			}
			e, err := parseEntry(typ, adt.Value())
			if err != nil {
				return entries, err
			}
			entries = append(entries, e)
		}
		if err := adt.Err(); err != nil {
			return entries, err
		}
	}
	return entries, it.Err()
}

// parseEntry decodes one IPSET_ATTR_DATA of a dump. Attributes we never
// set (timeouts, counters, comments) are ignored.
func parseEntry(typ SetType, b []byte) (Entry, error) {
	var e Entry
	var ip2 netip.Addr
	var cidr2 uint8
	it := nlattr.Iter(b)
	for it.Next() {
		v := it.Value()
		var err error
		switch it.Type() {
		case nl.IPSET_ATTR_IP:
			e.IP, err = parseNestedAddr(v)
		case nl.IPSET_ATTR_IP2:
			ip2, err = parseNestedAddr(v)
		case nl.IPSET_ATTR_CIDR2:
			if len(v) < 1 {
				err = errShortCIDR2
				break
			}
			cidr2 = v[0]
		case nl.IPSET_ATTR_PORT:
			if len(v) < 2 {
				err = errShortPort
				break
			}
			e.Port = binary.BigEndian.Uint16(v)
		case nl.IPSET_ATTR_PROTO:
			if len(v) < 1 {
				err = errShortProto
				break
			}
			e.Proto = Proto(v[0])
		case nl.IPSET_ATTR_SKBMARK:
			if len(v) < 8 {
				err = errShortSkbMark
				break
			}
			m := binary.BigEndian.Uint64(v)
			e.SkbMark, e.SkbMarkMask = uint32(m>>32), uint32(m)
		}
		if err != nil {
			return Entry{}, err
		}
	}
	if err := it.Err(); err != nil {
		return Entry{}, err
	}
	switch typ {
	case HashIPPortIP:
		e.IP2 = ip2
	case HashIPPortNet:
		if !ip2.IsValid() {
			return Entry{}, errors.New("hash:ip,port,net member without a network")
		}
		e.Net = netip.PrefixFrom(ip2, int(cidr2)).Masked()
	}
	return e, nil
}

var (
	errShortCIDR2   = errors.New("short cidr2 attribute")
	errShortPort    = errors.New("short port attribute")
	errShortProto   = errors.New("short proto attribute")
	errShortSkbMark = errors.New("short skbmark attribute")
)

// parseNestedAddr reads {IPSET_ATTR_IPADDR_IPV4|IPV6: bytes}.
func parseNestedAddr(b []byte) (netip.Addr, error) {
	var a netip.Addr
	it := nlattr.Iter(b)
	for it.Next() {
		switch t, v := it.Type(), it.Value(); {
		case t == nl.IPSET_ATTR_IPADDR_IPV4 && len(v) == 4:
			a = netip.AddrFrom4([4]byte(v))
		case t == nl.IPSET_ATTR_IPADDR_IPV6 && len(v) == 16:
			a = netip.AddrFrom16([16]byte(v))
		default:
			return a, fmt.Errorf("bad address attribute type %d length %d", t, len(v))
		}
	}
	return a, it.Err()
}
