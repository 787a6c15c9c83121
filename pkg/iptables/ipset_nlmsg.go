package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink/nl"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nlattr"
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
//   - LIST: the library logs every attribute it does not know (the
//     bucketsize and initval of current hash sets) through the standard log
//     package on each call, and returns net.IP values we would convert
//     again. We parse the dump into Entry directly.

// ipsetSocket sends our own ipset requests on one netlink socket.
type ipsetSocket struct {
	socks map[int]*nl.SocketHandle
}

func (s *ipsetSocket) request(cmd int, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(cmd|(unix.NFNL_SUBSYS_IPSET<<8), flags)
	req.Sockets = s.socks
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
	err = req.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		if len(msg) < nl.SizeofNfgenmsg {
			return true
		}
		_ = nlattr.Walk(msg[nl.SizeofNfgenmsg:], func(t uint16, v []byte) error {
			switch {
			case t == nl.IPSET_ATTR_REVISION && len(v) >= 1:
				maxRev, found = v[0], true
			case t == nl.IPSET_ATTR_REVISION_MIN && len(v) >= 1:
				minRev = v[0]
			}
			return nil
		})
		return true
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
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	return ipsetErr(err)
}

// list dumps a set's members (`ipset list NAME`). The kernel may split a
// big set over several messages; each carries an ADT attribute with entries.
func (s *ipsetSocket) list(spec SetSpec) ([]Entry, error) {
	req := s.request(nl.IPSET_CMD_LIST, nl.GetIpsetFlags(nl.IPSET_CMD_LIST))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(spec.Name)))
	var entries []Entry
	var parseErr error
	err := req.ExecuteIter(unix.NETLINK_NETFILTER, 0, func(msg []byte) bool {
		if len(msg) < nl.SizeofNfgenmsg {
			return true
		}
		parseErr = nlattr.Walk(msg[nl.SizeofNfgenmsg:], func(t uint16, v []byte) error {
			if t != nl.IPSET_ATTR_ADT {
				return nil
			}
			return nlattr.Walk(v, func(t uint16, v []byte) error {
				if t != nl.IPSET_ATTR_DATA {
					return nil
				}
				e, err := parseEntry(spec.Type, v)
				if err != nil {
					return err
				}
				entries = append(entries, e)
				return nil
			})
		})
		return parseErr == nil
	})
	if err != nil {
		return nil, ipsetErr(err)
	}
	if parseErr != nil {
		return nil, fmt.Errorf("parsing members of %s: %w", spec.Name, parseErr)
	}
	return entries, nil
}

// parseEntry decodes one IPSET_ATTR_DATA of a dump. Attributes we never
// set (timeouts, counters, comments) are ignored.
func parseEntry(typ SetType, b []byte) (Entry, error) {
	var e Entry
	var ip2 netip.Addr
	var cidr2 uint8
	err := nlattr.Walk(b, func(t uint16, v []byte) error {
		var err error
		switch t {
		case nl.IPSET_ATTR_IP:
			e.IP, err = parseNestedAddr(v)
		case nl.IPSET_ATTR_IP2:
			ip2, err = parseNestedAddr(v)
		case nl.IPSET_ATTR_CIDR2:
			if len(v) < 1 {
				return errors.New("short cidr2 attribute")
			}
			cidr2 = v[0]
		case nl.IPSET_ATTR_PORT:
			if len(v) < 2 {
				return errors.New("short port attribute")
			}
			e.Port = binary.BigEndian.Uint16(v)
		case nl.IPSET_ATTR_PROTO:
			if len(v) < 1 {
				return errors.New("short proto attribute")
			}
			e.Proto = Proto(v[0])
		}
		return err
	})
	if err != nil {
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

// parseNestedAddr reads {IPSET_ATTR_IPADDR_IPV4|IPV6: bytes}.
func parseNestedAddr(b []byte) (netip.Addr, error) {
	var a netip.Addr
	err := nlattr.Walk(b, func(t uint16, v []byte) error {
		switch {
		case t == nl.IPSET_ATTR_IPADDR_IPV4 && len(v) == 4:
			a = netip.AddrFrom4([4]byte(v))
		case t == nl.IPSET_ATTR_IPADDR_IPV6 && len(v) == 16:
			a = netip.AddrFrom16([16]byte(v))
		default:
			return fmt.Errorf("bad address attribute type %d length %d", t, len(v))
		}
		return nil
	})
	return a, err
}
