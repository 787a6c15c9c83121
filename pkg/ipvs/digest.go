package ipvs

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
)

// A digest sums a hash of every virtual server, real server and address the
// kernel listed. The sum does not depend on the order of the listing (the
// kernel's hash table order, destinations newest first), so a reader can
// digest records as they come, without building or sorting the table; and
// two listings with the same digest hold the same things (64-bit hashes:
// a false match is as likely as a random collision).
//
// A periodic resync with nothing changed compares the kernel's digest with
// the one of the last Reconcile that found nothing to do (Applier.Resync):
// equal, nothing drifted.

// digestSeed is per process: digests are only compared within one.
var digestSeed = maphash.MakeSeed()

// Digester is implemented by IPVS readers that can digest the table
// without building it (KernelIPVS). Its digest must equal digestServices
// of what Services returns for the same table.
type Digester interface {
	Digest() (uint64, error)
}

// hashVS hashes a virtual server's own fields, the ones Services reads and
// comparisons use (not its real servers, hashed one by one).
func hashVS(key VSKey, scheduler string, flags Flags, timeout uint32) uint64 {
	var b [48]byte
	n := putKey(b[:], key.Addr, key.Port)
	b[n] = 'v'
	b[n+1] = byte(key.Proto)
	binary.LittleEndian.PutUint32(b[n+2:], uint32(flags))
	binary.LittleEndian.PutUint32(b[n+6:], timeout)
	binary.LittleEndian.PutUint32(b[n+10:], key.FWMark)
	n += 14
	var h maphash.Hash
	h.SetSeed(digestSeed)
	h.Write(b[:n])
	h.WriteString(scheduler)
	return h.Sum64()
}

// hashRS hashes one real server of the virtual server key.
func hashRS(key VSKey, rs RealServer) uint64 {
	var b [64]byte
	n := putKey(b[:], key.Addr, key.Port)
	b[n] = 'r'
	b[n+1] = byte(key.Proto)
	binary.LittleEndian.PutUint32(b[n+2:], key.FWMark)
	n += 6
	n += putKey(b[n:], rs.Key.Addr, rs.Key.Port)
	binary.LittleEndian.PutUint64(b[n:], uint64(int64(rs.Weight)))
	binary.LittleEndian.PutUint32(b[n+8:], uint32(rs.Forward))
	n += 12
	return maphash.Bytes(digestSeed, b[:n])
}

// hashAddr hashes an address bound on the dummy link.
func hashAddr(addr netip.Addr) uint64 {
	var b [20]byte
	n := putKey(b[:], addr, 0)
	b[n] = 'a'
	return maphash.Bytes(digestSeed, b[:n+1])
}

// putKey writes an address (16 bytes, IPv4 mapped, plus its family) and a
// port; it returns the length written (19).
func putKey(b []byte, addr netip.Addr, port uint16) int {
	a := addr.As16()
	copy(b, a[:])
	if addr.Is4() {
		b[16] = 4
	} else {
		b[16] = 6
	}
	binary.BigEndian.PutUint16(b[17:], port)
	return 19
}

// digestVS is the digest of one virtual server with its real servers.
func digestVS(vs *VirtualServer) uint64 {
	sum := hashVS(vs.Key, vs.Scheduler, vs.Flags, vs.Timeout)
	for _, rs := range vs.RealServers {
		sum += hashRS(vs.Key, rs)
	}
	return sum
}

// digestServices is the digest of a listing (what Services returns).
func digestServices(vss []*VirtualServer) uint64 {
	var sum uint64
	for _, vs := range vss {
		if vs != nil {
			sum += digestVS(vs)
		}
	}
	return sum
}

// digestAddrs is the digest of the dummy link's addresses.
func digestAddrs(addrs []netip.Addr) uint64 {
	var sum uint64
	for _, a := range addrs {
		sum += hashAddr(a)
	}
	return sum
}

// digestState is the digest of a ReadKernel result: it equals
// kernelDigest of the same kernel content.
func digestState(st *State) uint64 {
	var sum uint64
	for _, vs := range st.VirtualServers {
		if vs != nil {
			sum += digestVS(vs)
		}
	}
	return withAddrs(sum, digestAddrs(st.Addresses))
}

// kernelDigest digests the table (with the reader's Digest when it has one)
// and the dummy link's addresses, as ReadKernel would list them.
func kernelDigest(ipvs IPVS, links Links) (uint64, error) {
	var table uint64
	if d, ok := ipvs.(Digester); ok {
		sum, err := d.Digest()
		if err != nil {
			return 0, err
		}
		table = sum
	} else {
		vss, err := ipvs.Services()
		if err != nil {
			return 0, err
		}
		table = digestServices(vss)
	}
	addrs, err := links.Addresses()
	if err != nil {
		return 0, err
	}
	return withAddrs(table, digestAddrs(addrs)), nil
}

// withAddrs combines a table's digest with its addresses'. The addresses'
// is mixed apart, so that an address and a virtual server never cancel out.
func withAddrs(table, addrs uint64) uint64 { return table ^ bitsMix(addrs) }

// bitsMix is a bijective 64-bit mixer (the SplitMix64 finalizer).
func bitsMix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
