//go:build linux

package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockoptReader reads the IPv4 part of the IPVS table over the kernel's
// getsockopt interface (see sockopt.go), on a raw socket of the network
// namespace it was opened in.
type sockoptReader struct {
	fd  int
	buf []byte // reused for the destination requests
	// svcBuf and rsBuf are reused by digest4 (services4 keeps what it
	// decodes and allocates).
	svcBuf []byte
	rsBuf  []RealServer
}

// openSockopt opens the socket the IPVS socket options are asked on.
func openSockopt() (*sockoptReader, error) {
	if strconv.IntSize != 64 {
		return nil, errors.New("the IPVS socket option records are read with 64-bit layouts only")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("raw socket for the IPVS socket options: %w", err)
	}
	return &sockoptReader{fd: fd}, nil
}

func (r *sockoptReader) close() { unix.Close(r.fd) }

// get is getsockopt(fd, IPPROTO_IP, opt, b, len(b)); the kernel reads the
// request from b and writes the answer over it.
func (r *sockoptReader) get(opt int, b []byte) error {
	l := uint32(len(b))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(r.fd), unix.IPPROTO_IP, uintptr(opt),
		uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// numServices is IP_VS_SO_GET_INFO's num_services.
func (r *sockoptReader) numServices() (int, error) {
	b := make([]byte, soInfoLen)
	if err := r.get(soGetInfo, b); err != nil {
		return 0, fmt.Errorf("IP_VS_SO_GET_INFO: %w", err)
	}
	return int(binary.NativeEndian.Uint32(b[8:])), nil
}

// services4 is `ipvsadm -Sn` for IPv4: every IPv4 TCP, UDP and SCTP virtual
// server with its real servers. count is how many IPv4 services the kernel
// listed, firewall-mark ones included.
func (r *sockoptReader) services4() (out []*VirtualServer, count int, err error) {
	n, err := r.numServices()
	if err != nil {
		return nil, 0, err
	}
	var list []soService
	for capacity := n + 16; ; capacity *= 2 {
		b := encodeGetServices(capacity)
		if err := r.get(soGetServices, b); err != nil {
			return nil, 0, fmt.Errorf("IP_VS_SO_GET_SERVICES: %w", err)
		}
		var full bool
		if list, full = decodeServices(b); !full {
			break
		}
	}
	out = make([]*VirtualServer, 0, len(list))
	for _, s := range list {
		if s.vs == nil {
			continue
		}
		rss, err := r.dests(nil, s.vs.Key, s.numDests)
		if errors.Is(err, unix.ESRCH) {
			continue // deleted since the service listing
		}
		if err != nil {
			return nil, 0, err
		}
		s.vs.RealServers = rss
		out = append(out, s.vs)
	}
	return out, len(list), nil
}

// digest4 is digestServices of what services4 lists, read with the same
// calls but decoded one record at a time into reused buffers: nothing is
// kept, nothing sorted, next to nothing allocated.
func (r *sockoptReader) digest4() (uint64, error) {
	n, err := r.numServices()
	if err != nil {
		return 0, err
	}
	var b []byte
	for capacity := n + 16; ; capacity *= 2 {
		size := soServicesHeader + capacity*soServiceLen
		if cap(r.svcBuf) < size {
			r.svcBuf = make([]byte, size)
		}
		b = r.svcBuf[:size]
		clear(b) // a slot left zero ends the list
		binary.NativeEndian.PutUint32(b, uint32(capacity))
		if err := r.get(soGetServices, b); err != nil {
			return 0, fmt.Errorf("IP_VS_SO_GET_SERVICES: %w", err)
		}
		if !servicesFull(b) {
			break
		}
	}
	var sum uint64
	for i := range (len(b) - soServicesHeader) / soServiceLen {
		e := serviceEntry(b, i)
		if binary.NativeEndian.Uint16(e[0:]) == 0 {
			break
		}
		vs, numDests, ok := decodeService(e)
		if !ok {
			continue
		}
		rss, err := r.dests(r.rsBuf[:0], vs.Key, numDests)
		if errors.Is(err, unix.ESRCH) {
			continue // deleted since the service listing
		}
		if err != nil {
			return 0, err
		}
		r.rsBuf = rss
		sum += hashVS(vs.Key, vs.Scheduler, vs.Flags, vs.Timeout)
		for _, rs := range rss {
			sum += hashRS(vs.Key, rs)
		}
	}
	return sum, nil
}

// dests lists one IPv4 service's real servers, about n of them, appended
// to dst.
func (r *sockoptReader) dests(dst []RealServer, key VSKey, n int) ([]RealServer, error) {
	for capacity := n + 4; ; capacity *= 2 {
		size := soDestsHeader + capacity*soDestLen
		if cap(r.buf) < size {
			r.buf = make([]byte, size)
		}
		b := r.buf[:size]
		clear(b[:soDestsHeader])
		for off := soDestsHeader; off < size; off += soDestLen {
			clear(b[off : off+6]) // address and port: a slot left zero ends the list
		}
		encodeGetDests(b, key, capacity)
		if err := r.get(soGetDests, b); err != nil {
			return nil, fmt.Errorf("IP_VS_SO_GET_DESTS %s: %w", key, err)
		}
		if rss, full := decodeDests(dst, b); !full {
			return rss, nil
		}
	}
}
