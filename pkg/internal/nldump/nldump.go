// Package nldump sends netlink requests and reads their answers with one
// receive buffer kept across requests, walking the messages in place.
//
// github.com/vishvananda/netlink's NetlinkRequest.Execute allocates a 64 KiB
// buffer per receive and a copy of every datagram; a full resync dumps
// about 12,000 kube-ipvs0 addresses and ipsets of 10,000 members, and that
// garbage was most of the resync's GC work. The requests are still built
// with the library's nl package.
package nldump

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nlattr"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ErrDumpInterrupted is the library's: the kernel flagged the dump
// NLM_F_DUMP_INTR (the table changed while it was read), so the answer may
// be inconsistent and the caller may retry.
var ErrDumpInterrupted = nl.ErrDumpInterrupted

// ErrTruncated reports a datagram larger than the receive buffer. The
// buffer is grown for the next request.
var ErrTruncated = errors.New("netlink datagram truncated")

// walker follows one request's answer, datagram by datagram, as the
// library's ExecuteIter does: messages of other requests (seq) or sockets
// (pid) are skipped, NLMSG_DONE or an NLMSG_ERROR ends the answer, a
// message without NLM_F_MULTI is the whole answer.
type walker struct {
	seq, pid uint32
	resType  uint16 // 0: every message type
	fn       func(msg []byte) error
	fnErr    error // the first error fn returned; later messages are drained
	intr     bool  // a message carried NLM_F_DUMP_INTR
}

// datagram walks the messages of one received datagram; done reports that
// the answer is complete.
func (w *walker) datagram(b []byte) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return false, fmt.Errorf("bad netlink message length %d (have %d bytes): %w", l, len(b), unix.EINVAL)
		}
		typ := binary.NativeEndian.Uint16(b[4:6])
		flags := binary.NativeEndian.Uint16(b[6:8])
		seq := binary.NativeEndian.Uint32(b[8:12])
		pid := binary.NativeEndian.Uint32(b[12:16])
		data := b[unix.NLMSG_HDRLEN:l]
		if next := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1); next < len(b) {
			b = b[next:]
		} else {
			b = nil
		}
		// A reply to an earlier request on this socket that was given up
		// on (a parse error, a timeout) is not ours.
		if seq != w.seq || pid != w.pid {
			continue
		}
		if flags&unix.NLM_F_DUMP_INTR != 0 {
			w.intr = true
		}
		if typ == unix.NLMSG_DONE || typ == unix.NLMSG_ERROR {
			if typ == unix.NLMSG_DONE && len(data) == 0 {
				return true, nil
			}
			if len(data) < 4 {
				return true, fmt.Errorf("netlink message type %d: %d bytes, short of an error code: %w", typ, len(data), unix.EINVAL)
			}
			errno := int32(binary.NativeEndian.Uint32(data[0:4]))
			if errno == 0 {
				return true, nil // NLMSG_DONE, or the ACK of a request
			}
			return true, errnoError(errno, flags, data[4:])
		}
		if w.resType != 0 && typ != w.resType {
			continue
		}
		if w.fnErr == nil {
			w.fnErr = w.fn(data)
		}
		if flags&unix.NLM_F_MULTI == 0 {
			return true, nil
		}
	}
	return false, nil
}

// result is the answer's outcome once complete without a kernel error.
func (w *walker) result() error {
	if w.intr {
		return ErrDumpInterrupted
	}
	return w.fnErr
}

// errnoError is the kernel's negative errno, with the extended ACK's
// message when the socket asked for one.
func errnoError(errno int32, flags uint16, rest []byte) error {
	err := error(unix.Errno(-errno))
	if flags&unix.NLM_F_ACK_TLVS == 0 || len(rest) < unix.NLMSG_HDRLEN {
		return err
	}
	// The echoed request: its header only when capped.
	skip := unix.NLMSG_HDRLEN
	if flags&unix.NLM_F_CAPPED == 0 {
		skip = (int(binary.NativeEndian.Uint32(rest[0:4])) + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
	}
	if skip < unix.NLMSG_HDRLEN || skip > len(rest) {
		return err
	}
	it := nlattr.Iter(rest[skip:])
	for it.Next() {
		if it.Type() == unix.NLMSGERR_ATTR_MSG {
			return fmt.Errorf("%w: %s", err, unix.ByteSliceToString(it.Value()))
		}
	}
	return err
}
