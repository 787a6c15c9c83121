package ipvs

import (
	"bytes"
	"encoding/binary"
	"net/netip"
)

// The kernel's getsockopt interface to IPVS (include/uapi/linux/ip_vs.h),
// the one ipvsadm used before generic netlink. It only knows IPv4, but it
// reads the whole IPv4 service table in one call, under the IPVS mutex,
// and a service's destinations in one more, as fixed-size binary records:
// no text to format and parse as with /proc/net/ip_vs, no netlink
// attributes. The layouts below are those of a 64-bit kernel (a __u64 in
// the statistics aligns the records to 8 bytes).
const (
	soBase        = 64 + 1024 + 64 // IP_VS_BASE_CTL
	soGetInfo     = soBase + 1     // IP_VS_SO_GET_INFO
	soGetServices = soBase + 2     // IP_VS_SO_GET_SERVICES
	soGetDests    = soBase + 4     // IP_VS_SO_GET_DESTS

	// struct ip_vs_getinfo: version, size, num_services.
	soInfoLen = 12
	// struct ip_vs_get_services: num_services, then the entries (8-aligned).
	soServicesHeader = 8
	// struct ip_vs_service_entry: protocol@0 addr@4 port@8 fwmark@12
	// sched_name[16]@16 flags@32 timeout@36 netmask@40 num_dests@44
	// stats@48 (struct ip_vs_stats_user, 56 bytes).
	soServiceLen = 104
	// struct ip_vs_get_dests: protocol@0 addr@4 port@8 fwmark@12
	// num_dests@16, then the entries (8-aligned).
	soDestsHeader = 24
	// struct ip_vs_dest_entry: addr@0 port@4 conn_flags@8 weight@12
	// thresholds, connection counts, stats@40.
	soDestLen = 96

	// IP_VS_CONN_F_FWD_MASK and IP_VS_CONN_F_LOCALNODE.
	connFwdMask   = 0x7
	connLocalNode = 0x1
)

// soService is one decoded struct ip_vs_service_entry.
type soService struct {
	vs       *VirtualServer // nil: not a TCP, UDP or SCTP address service
	numDests int
}

// encodeGetServices is the request for up to n IPv4 services.
func encodeGetServices(n int) []byte {
	b := make([]byte, soServicesHeader+n*soServiceLen)
	binary.NativeEndian.PutUint32(b, uint32(n))
	return b
}

// decodeServices reads the entries the kernel filled in (it does not say
// how many: an entry still zero, protocol 0, ends the list) and reports
// whether every slot was filled, in which case there may be more.
func decodeServices(b []byte) (out []soService, full bool) {
	n := (len(b) - soServicesHeader) / soServiceLen
	out = make([]soService, 0, n)
	for i := range n {
		e := serviceEntry(b, i)
		if binary.NativeEndian.Uint16(e[0:]) == 0 {
			return out, false
		}
		vs, numDests, ok := decodeService(e)
		s := soService{numDests: numDests}
		if ok {
			s.vs = &vs
		}
		out = append(out, s)
	}
	return out, true
}

// serviceEntry is the i-th struct ip_vs_service_entry of a
// IP_VS_SO_GET_SERVICES answer.
func serviceEntry(b []byte, i int) []byte {
	return b[soServicesHeader+i*soServiceLen:][:soServiceLen]
}

// servicesFull: every slot of the answer was filled (there may be more).
func servicesFull(b []byte) bool {
	n := (len(b) - soServicesHeader) / soServiceLen
	return n == 0 || binary.NativeEndian.Uint16(serviceEntry(b, n-1)) != 0
}

// decodeService reads one struct ip_vs_service_entry (protocol not 0): the
// virtual server without its real servers and how many it has; ok is false
// for an unknown protocol or a firewall-mark service that is not ours
// (OwnedMark).
func decodeService(e []byte) (vs VirtualServer, numDests int, ok bool) {
	numDests = int(binary.NativeEndian.Uint32(e[44:]))
	p, known := protoFromNumber(binary.NativeEndian.Uint16(e[0:]))
	key := VSKey{Addr: netip.AddrFrom4([4]byte(e[4:8])), Port: binary.BigEndian.Uint16(e[8:]), Proto: p}
	if mark := binary.NativeEndian.Uint32(e[12:]); mark != 0 {
		known = OwnedMark(mark)
		key = FWMarkKey(true, mark)
	}
	if !known {
		return VirtualServer{}, numDests, false
	}
	sched := e[16:32]
	if i := bytes.IndexByte(sched, 0); i >= 0 {
		sched = sched[:i]
	}
	return VirtualServer{
		Key:       key,
		Scheduler: schedulerName(sched),
		Flags:     Flags(binary.NativeEndian.Uint32(e[32:])) &^ FlagHashed,
		Timeout:   binary.NativeEndian.Uint32(e[36:]),
	}, numDests, true
}

// encodeGetDests writes into b, soDestsHeader+n*soDestLen long with the
// header and each slot's address and port zero, the request for up to n
// destinations of key's service (IPv4).
func encodeGetDests(b []byte, key VSKey, n int) {
	if key.FWMark != 0 {
		// The kernel looks a firewall-mark service up by its mark alone.
		binary.NativeEndian.PutUint16(b[0:], 0)
		clear(b[4:10])
		binary.NativeEndian.PutUint32(b[12:], key.FWMark)
	} else {
		binary.NativeEndian.PutUint16(b[0:], protoNumber(key.Proto))
		a := key.Addr.As4()
		copy(b[4:8], a[:])
		binary.BigEndian.PutUint16(b[8:], key.Port)
		binary.NativeEndian.PutUint32(b[12:], 0)
	}
	binary.NativeEndian.PutUint32(b[16:], uint32(n))
}

// decodeDests reads the destinations the kernel filled in. An entry still
// zero (address 0.0.0.0, port 0) ends the list, and full says every slot
// was filled. The real servers are appended to dst.
func decodeDests(dst []RealServer, b []byte) (out []RealServer, full bool) {
	n := (len(b) - soDestsHeader) / soDestLen
	filled := 0
	for filled < n && !emptyDest(b[soDestsHeader+filled*soDestLen:]) {
		filled++
	}
	out = dst
	if out == nil {
		out = make([]RealServer, 0, filled)
	}
	for i := range filled {
		out = append(out, decodeDest(b[soDestsHeader+i*soDestLen:][:soDestLen]))
	}
	return out, filled == n
}

// decodeDest reads one struct ip_vs_dest_entry.
func decodeDest(e []byte) RealServer {
	fwd := Forward(binary.NativeEndian.Uint32(e[8:]) & connFwdMask)
	if fwd == connLocalNode {
		fwd = ForwardMasq // as in fromLibDestination
	}
	return RealServer{
		Key:     RSKey{Addr: netip.AddrFrom4([4]byte(e[0:4])), Port: binary.BigEndian.Uint16(e[4:])},
		Weight:  int(int32(binary.NativeEndian.Uint32(e[12:]))),
		Forward: fwd,
	}
}

// emptyDest: the slot's address and port are still zero.
func emptyDest(e []byte) bool {
	return [6]byte(e[:6]) == [6]byte{}
}

// schedulerName returns the usual names without allocating a string for
// every service read.
func schedulerName(b []byte) string {
	for _, name := range []string{"rr", "wrr", "lc", "wlc", "sh", "mh", "dh", "sed", "nq", "lblc", "lblcr", "fo", "ovf", "twos"} {
		if string(b) == name {
			return name
		}
	}
	return string(b)
}
