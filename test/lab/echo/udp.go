package echo

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// listenUDP binds a wildcard (dual-stack where possible) UDP socket and asks
// the kernel for each datagram's destination address, so replies can leave
// from the address the client sent to. Without that, a host with several
// addresses may answer from another one and a connected client (or an IPVS
// connection entry) would not match the reply.
func listenUDP(port int) (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: port})
	if err != nil {
		return nil, err
	}
	raw, err := c.SyscallConn()
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		sa, err := unix.Getsockname(int(fd))
		if err != nil {
			sockErr = err
			return
		}
		if _, ok := sa.(*unix.SockaddrInet6); ok {
			// Also covers IPv4 datagrams on a dual-stack socket: the kernel
			// reports them as v4-mapped IPV6_PKTINFO.
			sockErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		} else {
			sockErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		}
	})
	if err == nil {
		err = sockErr
	}
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

func (s *Server) serveUDP(c *net.UDPConn) {
	buf := make([]byte, 64*1024)
	oob := make([]byte, 512)
	for {
		_, oobn, _, from, err := c.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.logger.Printf("udp read: %v", err)
			continue
		}
		s.logger.Printf("udp datagram from %s", formatAddrPort(from))
		reply := []byte(s.line(from))
		if src := replySource(oob[:oobn]); src != nil {
			if _, _, err := c.WriteMsgUDPAddrPort(reply, src, from); err == nil {
				continue
			}
			// The destination may have stopped being local; fall back to
			// letting the kernel choose.
		}
		if _, err := c.WriteToUDPAddrPort(reply, from); err != nil {
			s.logger.Printf("udp reply to %s: %v", formatAddrPort(from), err)
		}
	}
}

// replySource turns the received packet-info control message into the one
// that makes the reply's source address the datagram's destination address.
// It returns nil when there is none or the destination cannot be a source.
func replySource(oob []byte) []byte {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= 20:
			var info unix.Inet6Pktinfo
			copy(info.Addr[:], m.Data[:16])
			info.Ifindex = binary.NativeEndian.Uint32(m.Data[16:20])
			src := netip.AddrFrom16(info.Addr)
			if !usableSource(src.Unmap()) {
				return nil
			}
			if !src.IsLinkLocalUnicast() {
				// Only the source matters; routing picks the interface (and
				// the index reported for IPv4 datagrams is not reliable).
				info.Ifindex = 0
			}
			return unix.PktInfo6(&info)
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12:
			// struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
			// Ifindex stays 0: only the source matters, routing picks the
			// interface.
			var info unix.Inet4Pktinfo
			copy(info.Spec_dst[:], m.Data[8:12]) // the header's destination
			if !usableSource(netip.AddrFrom4(info.Spec_dst)) {
				return nil
			}
			return unix.PktInfo4(&info)
		}
	}
	return nil
}

func usableSource(a netip.Addr) bool {
	return a.IsValid() && !a.IsMulticast() && !a.IsUnspecified() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
