// Package nlattr walks netlink attributes in place, for the few netlink
// answers the proxy parses itself (ipset listings, IPVS service dumps,
// address dumps) instead of through a library that allocates per attribute.
package nlattr

import (
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Walk calls fn for each netlink attribute in b with its type (nested and
// byte-order flags cleared) and payload.
func Walk(b []byte, fn func(typ uint16, val []byte) error) error {
	const hdr = unix.SizeofNlAttr
	for len(b) >= hdr {
		l := int(nl.NativeEndian().Uint16(b[0:2]))
		t := nl.NativeEndian().Uint16(b[2:4]) & nl.NLA_TYPE_MASK
		if l < hdr || l > len(b) {
			return fmt.Errorf("bad netlink attribute length %d (have %d bytes)", l, len(b))
		}
		if err := fn(t, b[hdr:l]); err != nil {
			return err
		}
		aligned := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if aligned > len(b) {
			break
		}
		b = b[aligned:]
	}
	return nil
}
