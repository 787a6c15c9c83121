package ipvs

import (
	"net/netip"
	"slices"
	"strconv"
)

// Dump renders s canonically: one "addr 10.96.0.10/32" line per address on
// kube-ipvs0, then DumpIPVS. Planned and observed states use the same format,
// so a golden file or an end-to-end check can compare them as text.
func (s *State) Dump() string {
	if s == nil {
		return ""
	}
	var b []byte
	for _, a := range sortedAddrs(s.Addresses) {
		b = append(b, "addr "...)
		b = appendPrefix(b, a)
		b = append(b, '\n')
	}
	return string(s.appendIPVS(b))
}

// DumpIPVS renders the virtual servers close to `ipvsadm -Sn`, sorted by
// address, port and protocol, each followed by its real servers:
//
//	-A -t 10.96.0.10:80 -s rr
//	-a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1
//
// (ipvsadm itself prints in kernel hash order, so sort its output before
// comparing.)
func (s *State) DumpIPVS() string {
	if s == nil {
		return ""
	}
	return string(s.appendIPVS(nil))
}

func (s *State) appendIPVS(b []byte) []byte {
	keys := make([]VSKey, 0, len(s.VirtualServers))
	for k := range s.VirtualServers {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, VSKey.Compare)
	for _, k := range keys {
		vs := s.VirtualServers[k]
		if vs == nil {
			continue
		}
		b = appendServiceRule(b, "-A", vs)
		b = append(b, '\n')
		rss := vs.RealServers
		if !slices.IsSortedFunc(rss, compareRS) {
			rss = slices.Clone(rss)
			slices.SortFunc(rss, compareRS)
		}
		for _, rs := range rss {
			b = appendDestRule(b, "-a", k, rs)
			b = append(b, '\n')
		}
	}
	return b
}

// appendPrefix writes addr as a host prefix, the way it is bound.
func appendPrefix(b []byte, addr netip.Addr) []byte {
	b = addr.AppendTo(b)
	b = append(b, '/')
	return strconv.AppendInt(b, int64(hostBits(addr)), 10)
}

// appendServiceKey writes "-t 10.96.0.10:80" (-u for UDP, --sctp-service),
// or "-f 65536" for a firewall mark ("-f 65536 -6" for IPv6), in decimal as
// ipvsadm prints it.
func appendServiceKey(b []byte, k VSKey) []byte {
	if k.FWMark != 0 {
		b = append(b, "-f "...)
		b = strconv.AppendUint(b, uint64(k.FWMark), 10)
		if k.Addr.Is6() {
			b = append(b, " -6"...)
		}
		return b
	}
	switch k.Proto {
	case ProtoTCP:
		b = append(b, "-t "...)
	case ProtoUDP:
		b = append(b, "-u "...)
	case ProtoSCTP:
		b = append(b, "--sctp-service "...)
	default:
		b = append(b, "--proto-"...)
		b = strconv.AppendInt(b, int64(k.Proto), 10)
		b = append(b, ' ')
	}
	return netip.AddrPortFrom(k.Addr, k.Port).AppendTo(b)
}

// appendServiceRule writes "<cmd> -t VIP:PORT -s rr [-p T] [-o] [-b flags]"
// in the order ipvsadm -S uses.
func appendServiceRule(b []byte, cmd string, vs *VirtualServer) []byte {
	b = append(b, cmd...)
	b = append(b, ' ')
	b = appendServiceKey(b, vs.Key)
	b = append(b, " -s "...)
	b = append(b, vs.Scheduler...)
	if vs.Flags&FlagPersistent != 0 {
		b = append(b, " -p "...)
		b = strconv.AppendUint(b, uint64(vs.Timeout), 10)
	}
	if vs.Flags&FlagOnePacket != 0 {
		b = append(b, " -o"...)
	}
	b = appendSchedFlags(b, vs.Scheduler, vs.Flags)
	if rest := vs.Flags &^ (FlagPersistent | FlagHashed | FlagOnePacket | FlagSched1 | FlagSched2 | FlagSched3); rest != 0 {
		// Not an ipvsadm option; shown so that no difference is hidden.
		b = append(b, " --flags 0x"...)
		b = strconv.AppendUint(b, uint64(rest), 16)
	}
	return b
}

// appendSchedFlags writes " -b name,name" with ipvsadm's names.
func appendSchedFlags(b []byte, sched string, f Flags) []byte {
	names := [3]string{"flag-1", "flag-2", "flag-3"}
	switch sched {
	case "sh":
		names = [3]string{"sh-fallback", "sh-port", "flag-3"}
	case "mh":
		names = [3]string{"mh-fallback", "mh-port", "flag-3"}
	}
	sep := " -b "
	for i, bit := range [3]Flags{FlagSched1, FlagSched2, FlagSched3} {
		if f&bit != 0 {
			b = append(b, sep...)
			b = append(b, names[i]...)
			sep = ","
		}
	}
	return b
}

// appendDestRule writes "<cmd> -t VIP:PORT -r RIP:RPORT -m -w W".
func appendDestRule(b []byte, cmd string, k VSKey, rs RealServer) []byte {
	b = appendDestKey(b, cmd, k, rs.Key)
	switch rs.Forward {
	case ForwardMasq:
		b = append(b, " -m"...)
	case ForwardTunnel:
		b = append(b, " -i"...)
	case ForwardRoute:
		b = append(b, " -g"...)
	default:
		b = append(b, " --forward "...)
		b = strconv.AppendUint(b, uint64(rs.Forward), 10)
	}
	b = append(b, " -w "...)
	return strconv.AppendInt(b, int64(rs.Weight), 10)
}

// appendDestKey writes "<cmd> -t VIP:PORT -r RIP:RPORT".
func appendDestKey(b []byte, cmd string, k VSKey, rk RSKey) []byte {
	b = append(b, cmd...)
	b = append(b, ' ')
	b = appendServiceKey(b, k)
	b = append(b, " -r "...)
	return netip.AddrPortFrom(rk.Addr, rk.Port).AppendTo(b)
}
