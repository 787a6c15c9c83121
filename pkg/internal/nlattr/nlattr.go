// Package nlattr walks netlink attributes in place, for the few netlink
// answers the proxy parses itself (ipset listings, IPVS service dumps,
// address dumps) instead of through a library that allocates per attribute.
package nlattr

import (
	"encoding/binary"
	"fmt"
)

const (
	hdrLen   = 4      // struct nlattr: u16 length, u16 type
	alignTo  = 4      // NLA_ALIGNTO
	typeMask = 0x3fff // NLA_TYPE_MASK: clears NLA_F_NESTED, NLA_F_NET_BYTEORDER
)

// Iterator steps through the attributes of a buffer without allocating:
// a full resync parses tens of thousands of ipset members and addresses,
// and a callback per attribute cost a closure per level each time.
//
//	it := nlattr.Iter(b)
//	for it.Next() {
//		switch it.Type() { ... it.Value() ... }
//	}
//	if err := it.Err(); err != nil { ... }
//
// An attribute whose length is shorter than its header or runs past the
// buffer ends the walk with an error. Fewer trailing bytes than a header,
// or a last attribute missing its alignment padding, end it quietly.
type Iterator struct {
	b   []byte
	typ uint16
	val []byte
	err error
}

// Iter returns an iterator over the attributes in b.
func Iter(b []byte) Iterator { return Iterator{b: b} }

// Next moves to the next attribute and reports whether there is one.
func (it *Iterator) Next() bool {
	b := it.b
	if len(b) < hdrLen {
		it.b, it.val = nil, nil
		return false
	}
	l := int(binary.NativeEndian.Uint16(b[0:2]))
	if l < hdrLen || l > len(b) {
		it.err = fmt.Errorf("bad netlink attribute length %d (have %d bytes)", l, len(b))
		it.b, it.val = nil, nil
		return false
	}
	it.typ = binary.NativeEndian.Uint16(b[2:4]) & typeMask
	it.val = b[hdrLen:l]
	if aligned := (l + alignTo - 1) &^ (alignTo - 1); aligned <= len(b) {
		it.b = b[aligned:]
	} else {
		it.b = nil
	}
	return true
}

// Type is the current attribute's type, nested and byte-order flags
// cleared.
func (it *Iterator) Type() uint16 { return it.typ }

// Value is the current attribute's payload, a slice of the buffer.
func (it *Iterator) Value() []byte { return it.val }

// Err is the malformed attribute that ended the walk, if any.
func (it *Iterator) Err() error { return it.err }

// Append appends one attribute, padded to the alignment, to b: the inverse
// of the walk, for building answers in tests.
func Append(b []byte, typ uint16, val ...byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(hdrLen+len(val)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, val...)
	for len(b)%alignTo != 0 {
		b = append(b, 0)
	}
	return b
}
