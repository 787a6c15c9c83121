package ipvs

import (
	"encoding/binary"
	"net/netip"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nlattr"
)

// Generic netlink IPVS attributes (include/uapi/linux/ip_vs.h) read by the
// lean service dump.
const (
	genlCmdGetService = 4 // IPVS_CMD_GET_SERVICE
	genlAttrService   = 1 // IPVS_CMD_ATTR_SERVICE

	svcAttrAF       = 1 // IPVS_SVC_ATTR_AF
	svcAttrProtocol = 2
	svcAttrAddr     = 3
	svcAttrPort     = 4
	svcAttrFWMark   = 5
	svcAttrSched    = 6
	svcAttrFlags    = 7 // struct ip_vs_flags: flags, mask
	svcAttrTimeout  = 8

	afInet6 = 10 // AF_INET6
)

// parseGenlService6 reads one IPVS_CMD_GET_SERVICE answer (the attributes
// after the generic netlink header) and returns its virtual server when it
// is an IPv6 TCP, UDP or SCTP address service; IPv4 ones come from the
// socket options (sockopt.go).
func parseGenlService6(attrs []byte) (*VirtualServer, error) {
	var vs *VirtualServer
	it := nlattr.Iter(attrs)
	for it.Next() {
		if it.Type() != genlAttrService {
			continue
		}
		var (
			af, proto   uint16
			addr        []byte
			port        uint16
			fwmark      uint32
			sched       string
			flags, tout uint32
		)
		in := nlattr.Iter(it.Value())
		for in.Next() {
			typ, v := in.Type(), in.Value()
			switch {
			case typ == svcAttrAF && len(v) >= 2:
				af = binary.NativeEndian.Uint16(v)
			case typ == svcAttrProtocol && len(v) >= 2:
				proto = binary.NativeEndian.Uint16(v)
			case typ == svcAttrAddr:
				addr = v
			case typ == svcAttrPort && len(v) >= 2:
				port = binary.BigEndian.Uint16(v)
			case typ == svcAttrFWMark && len(v) >= 4:
				fwmark = binary.NativeEndian.Uint32(v)
			case typ == svcAttrSched:
				sched = cString(v)
			case typ == svcAttrFlags && len(v) >= 4:
				flags = binary.NativeEndian.Uint32(v)
			case typ == svcAttrTimeout && len(v) >= 4:
				tout = binary.NativeEndian.Uint32(v)
			}
		}
		if err := in.Err(); err != nil {
			return vs, err
		}
		if af == afInet6 && fwmark != 0 && OwnedMark(fwmark) {
			vs = &VirtualServer{Key: FWMarkKey(false, fwmark), Scheduler: sched, Flags: Flags(flags) &^ FlagHashed, Timeout: tout}
			continue
		}
		p, ok := protoFromNumber(proto)
		if af != afInet6 || fwmark != 0 || !ok || len(addr) < 16 {
			continue
		}
		vs = &VirtualServer{
			Key:       VSKey{Addr: netip.AddrFrom16([16]byte(addr[:16])), Port: port, Proto: p},
			Scheduler: sched,
			Flags:     Flags(flags) &^ FlagHashed,
			Timeout:   tout,
		}
	}
	return vs, it.Err()
}

// cString is a NUL-terminated string attribute.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
