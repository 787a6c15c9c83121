package nldump

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// bufSize is the library's receive size: the kernel never sends a dump
// datagram bigger than 32 KiB, so nothing is truncated.
const bufSize = 64 << 10

// Buffer is a receive buffer to keep between requests, for callers that
// open a socket per request.
type Buffer struct{ b []byte }

// Conn is a netlink socket of the network namespace that was current on
// the calling thread when it was opened (as the library's sockets), with
// one receive buffer. It serves one request at a time.
type Conn struct {
	mu      sync.Mutex // one request at a time, as the library's sockets
	f       *os.File
	rc      syscall.RawConn
	fd      int
	pid     uint32 // our port id, the kernel's replies carry it
	timeout time.Duration
	buf     *Buffer
	// stale: the last answer was not read to its end (see drain).
	stale bool

	// The receive's result, in fields so that recvFn, made once, needs
	// no closure per datagram.
	recvFn  func(fd uintptr) bool
	n       int
	errno   unix.Errno
	from    unix.RawSockaddrNetlink
	fromLen uint32
}

// Open opens a netlink socket of protocol proto (unix.NETLINK_ROUTE,
// unix.NETLINK_NETFILTER, ...). buf, when not nil, is the receive buffer
// to use; nil gives the Conn its own. A timeout > 0 bounds each send and
// receive: past it they fail with EAGAIN, as the library's do.
func Open(proto int, buf *Buffer, timeout time.Duration) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink getsockname: %w", err)
	}
	nsa, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink getsockname: %T", sa)
	}
	f := os.NewFile(uintptr(fd), "netlink")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	if buf == nil {
		buf = &Buffer{}
	}
	c := &Conn{f: f, rc: rc, fd: fd, pid: nsa.Pid, timeout: timeout, buf: buf}
	c.recvFn = c.recv
	return c, nil
}

// Close releases the socket.
func (c *Conn) Close() error { return c.f.Close() }

// SetStrictCheck asks the kernel to honour a dump request's header as a
// filter (NETLINK_GET_STRICT_CHK, Linux 4.20), e.g. the link index of an
// address dump. Older kernels refuse it; their dumps are whole.
func (c *Conn) SetStrictCheck() error {
	return unix.SetsockoptInt(c.fd, unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1)
}

// Execute sends req and calls fn with the payload of each message of the
// answer of type resType (0: all), in the receive buffer: fn must not keep
// it. After fn returns an error, the rest of the answer is read (so the
// socket is clean for the next request) and not passed to fn. The kernel's
// or the socket's errors come first, then ErrDumpInterrupted, then fn's.
//
// Those other errors (a timeout, a truncated datagram, a malformed message)
// end the read where it is, as the library does; the next request first
// reads out what is left (see drain), so that the kernel does not refuse
// it with EBUSY, and skips any late reply (its sequence number differs).
func (c *Conn) Execute(req *nl.NetlinkRequest, resType uint16, fn func(msg []byte) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf.b) == 0 {
		c.buf.b = make([]byte, bufSize)
	}
	if c.stale {
		c.drain()
		c.stale = false
	}
	if err := c.send(req.Serialize()); err != nil {
		return err
	}
	w := walker{seq: req.Seq, pid: c.pid, resType: resType, fn: fn}
	for {
		n, err := c.receive()
		if err != nil {
			c.stale = true
			return err
		}
		if c.from.Pid != 0 {
			c.stale = true
			return fmt.Errorf("netlink datagram from port %d, not the kernel", c.from.Pid)
		}
		if n < unix.NLMSG_HDRLEN {
			c.stale = true
			return fmt.Errorf("short netlink datagram: %d bytes", n)
		}
		if n > len(c.buf.b) {
			c.buf.b = make([]byte, (n+bufSize-1)/bufSize*bufSize)
			c.stale = true
			return fmt.Errorf("%w: %d bytes", ErrTruncated, n)
		}
		done, err := w.datagram(c.buf.b[:n])
		if !done && err != nil {
			c.stale = true
		}
		if err != nil {
			return err
		}
		if done {
			break
		}
	}
	return w.result()
}

// drain reads out, without waiting, whatever is left of an answer given
// up on. The kernel fills the next part of a dump as the last one is read
// and refuses a new dump on the socket (EBUSY) while one runs: reading
// until nothing is left ends it.
func (c *Conn) drain() {
	for range 1 << 16 {
		_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(c.fd),
			uintptr(unsafe.Pointer(&c.buf.b[0])), uintptr(len(c.buf.b)), unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 && errno != unix.EINTR {
			return // EAGAIN: nothing left
		}
	}
}

func (c *Conn) deadline() time.Time {
	if c.timeout <= 0 {
		return time.Time{}
	}
	return time.Now().Add(c.timeout)
}

func (c *Conn) send(b []byte) error {
	if err := c.f.SetWriteDeadline(c.deadline()); err != nil {
		return err
	}
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	return ioError(err, serr)
}

// receive reads one datagram into the buffer; n is its full length, more
// than the buffer when truncated (MSG_TRUNC). The socket overflowing
// (ENOBUFS: the kernel dropped messages) is an error like any other.
func (c *Conn) receive() (int, error) {
	if err := c.f.SetReadDeadline(c.deadline()); err != nil {
		return 0, err
	}
	c.n, c.errno = 0, 0
	err := c.rc.Read(c.recvFn)
	if c.errno != 0 {
		return 0, c.errno
	}
	return c.n, ioError(err, nil)
}

// recv is recvfrom(2) with the sender's address in the Conn, which
// unix.Recvfrom would allocate.
func (c *Conn) recv(fd uintptr) bool {
	for {
		c.fromLen = unix.SizeofSockaddrNetlink
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd,
			uintptr(unsafe.Pointer(&c.buf.b[0])), uintptr(len(c.buf.b)), unix.MSG_TRUNC,
			uintptr(unsafe.Pointer(&c.from)), uintptr(unsafe.Pointer(&c.fromLen)))
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // nothing yet: wait for the poller
		}
		c.n, c.errno = int(n), errno
		return true
	}
}

// ioError maps the poller's deadline to EAGAIN, which the library's
// sockets returned on their timeout, and prefers the system call's error.
func ioError(err, serr error) error {
	if serr != nil {
		return serr
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return unix.EAGAIN
	}
	return err
}
