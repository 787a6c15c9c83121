package echo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrSCTPUnsupported says the running kernel has no SCTP (socket() gave
// EPROTONOSUPPORT, or the module could not be loaded).
var ErrSCTPUnsupported = errors.New("kernel has no SCTP support (socket: protocol not supported); is the sctp module available?")

// sctpWriteTimeout bounds how long one accepted association may take to
// receive its line.
const sctpWriteTimeout = 5 * time.Second

// sctpSocket opens a non-blocking one-to-one SCTP socket.
func sctpSocket(family int) (int, error) { return streamSocket(family, unix.IPPROTO_SCTP) }

// streamSocket opens a non-blocking SOCK_STREAM socket of a protocol (SCTP;
// TCP in tests, which exercise the same code on kernels without SCTP).
// Non-blocking so that the fd can be handed to the runtime poller through
// os.NewFile, which gives deadlines and a Close that wakes a blocked accept.
func streamSocket(family, proto int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if proto == unix.IPPROTO_SCTP && (errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT)) {
		return -1, ErrSCTPUnsupported
	}
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

type sctpListener struct {
	f      *os.File
	addr   netip.AddrPort
	closed atomic.Bool
}

// listenSCTP listens on all addresses: a dual-stack AF_INET6 socket, or
// AF_INET when the kernel has IPv6 disabled.
func listenSCTP(port int) (*sctpListener, error) { return listenStream(unix.IPPROTO_SCTP, port) }

func listenStream(proto, port int) (*sctpListener, error) {
	if port < 0 || port > 65535 {
		return nil, fmt.Errorf("bad port %d", port)
	}
	fd, err := streamSocket(unix.AF_INET6, proto)
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: port}
	if errors.Is(err, unix.EAFNOSUPPORT) {
		fd, err = streamSocket(unix.AF_INET, proto)
		sa = &unix.SockaddrInet4{Port: port}
	}
	if err != nil {
		return nil, err
	}
	setup := func() error {
		if _, v6 := sa.(*unix.SockaddrInet6); v6 {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
				return os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
			}
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return os.NewSyscallError("setsockopt SO_REUSEADDR", err)
		}
		if err := unix.Bind(fd, sa); err != nil {
			return os.NewSyscallError("bind", err)
		}
		if err := unix.Listen(fd, 128); err != nil {
			return os.NewSyscallError("listen", err)
		}
		return nil
	}
	if err := setup(); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		_ = unix.Close(fd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	return &sctpListener{f: os.NewFile(uintptr(fd), "sctp-listener"), addr: sockaddrToAddrPort(local)}, nil
}

// Close stops the listener and wakes a pending accept.
func (l *sctpListener) Close() error {
	l.closed.Store(true)
	return l.f.Close()
}

// accept waits for one association; it fails with os.ErrClosed after Close.
func (l *sctpListener) accept() (*os.File, netip.AddrPort, error) {
	raw, err := l.f.SyscallConn()
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	var nfd int
	var peer unix.Sockaddr
	var acceptErr error
	err = raw.Read(func(fd uintptr) bool {
		nfd, peer, acceptErr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return !errors.Is(acceptErr, unix.EAGAIN)
	})
	if err != nil {
		if l.closed.Load() {
			// The raw-conn path reports "use of closed file", not
			// os.ErrClosed.
			err = os.ErrClosed
		}
		return nil, netip.AddrPort{}, err
	}
	if acceptErr != nil {
		return nil, netip.AddrPort{}, os.NewSyscallError("accept", acceptErr)
	}
	return os.NewFile(uintptr(nfd), "sctp-conn"), sockaddrToAddrPort(peer), nil
}

func (s *Server) serveSCTP(l *sctpListener) {
	for {
		conn, peer, err := l.accept()
		if err != nil {
			if errors.Is(err, os.ErrClosed) || l.closed.Load() {
				return
			}
			s.logger.Printf("sctp accept: %v", err)
			// Transient errors (ECONNABORTED, EMFILE) should not spin.
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.logger.Printf("sctp association from %s", formatAddrPort(peer))
		go func() {
			defer conn.Close()
			_ = conn.SetWriteDeadline(time.Now().Add(sctpWriteTimeout))
			if _, err := io.WriteString(conn, s.line(peer)); err != nil {
				s.logger.Printf("sctp write to %s: %v", formatAddrPort(peer), err)
			}
		}()
	}
}

// sctpRequest opens one association to addr, reads until the server closes
// and returns what it read.
func sctpRequest(ctx context.Context, addr netip.AddrPort) (string, error) {
	return streamRequest(ctx, unix.IPPROTO_SCTP, addr)
}

func streamRequest(ctx context.Context, proto int, addr netip.AddrPort) (string, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr
	if ip := addr.Addr().Unmap(); ip.Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: ip.As4()}
	} else {
		family = unix.AF_INET6
		zone := uint32(0)
		if z := addr.Addr().Zone(); z != "" {
			if ifi, err := net.InterfaceByName(z); err == nil {
				zone = uint32(ifi.Index)
			}
		}
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16(), ZoneId: zone}
	}
	fd, err := streamSocket(family, proto)
	if err != nil {
		return "", err
	}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		_ = unix.Close(fd)
		return "", os.NewSyscallError("connect", err)
	}
	f := os.NewFile(uintptr(fd), "sctp-client")
	defer f.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = f.SetDeadline(dl)
	}
	if err := waitConnected(f); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(f, 64*1024))
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// waitConnected waits for a non-blocking connect to finish. Each time the
// poller runs the callback (once at once, then after each writability edge)
// it looks at the socket itself: an error in SO_ERROR fails, a peer name
// means connected, neither means still in progress. Looking first matters:
// the connect may have finished before the wait began, and the edge that
// said so is gone.
func waitConnected(f *os.File) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var connErr error
	err = raw.Write(func(fd uintptr) bool {
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = os.NewSyscallError("getsockopt SO_ERROR", err)
			return true
		}
		switch e := unix.Errno(soErr); e {
		case 0, unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			_, err := unix.Getpeername(int(fd))
			return err == nil
		default:
			connErr = os.NewSyscallError("connect", e)
			return true
		}
	})
	if err != nil {
		return err
	}
	return connErr
}

func sockaddrToAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}
