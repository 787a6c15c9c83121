package servicecache

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// parseAddr parses an IP the way the API server historically accepted it:
// IPv4 octets with leading zeros ("010.0.0.1") are decimal, as in
// k8s.io/utils/net.ParseIPSloppy, so objects created before stricter
// validation still work. IPv4-mapped IPv6 addresses are unmapped (net.ParseIP
// treats them as IPv4 too). Zoned IPv6 addresses are rejected, and so are
// the unspecified ones (0.0.0.0, ::): no Service or endpoint can use them,
// the IPVS planner ignores them, and the kernel refuses them in the
// hash:ip and hash:ip,port ipsets, failing the add of every entry after.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		var ok bool
		if a, ok = parseLegacyIPv4(s); !ok {
			return netip.Addr{}, fmt.Errorf("invalid IP %q", s)
		}
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("invalid IP %q: zone not allowed", s)
	}
	if a = a.Unmap(); a.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("invalid IP %q: unspecified address", s)
	}
	return a, nil
}

// parseLegacyIPv4 accepts dotted-quad IPv4 with leading zeros.
func parseLegacyIPv4(s string) (netip.Addr, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	var b [4]byte
	for i, p := range parts {
		if p == "" || strings.TrimLeft(p, "0123456789") != "" {
			return netip.Addr{}, false
		}
		n, err := strconv.ParseUint(p, 10, 8)
		if err != nil {
			return netip.Addr{}, false
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b), true
}

// parsePrefix parses a CIDR leniently (leading zeros, surrounding spaces)
// and masks it, so "10.0.0.1/8" becomes "10.0.0.0/8".
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	addrStr, bitsStr, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: no prefix length", s)
	}
	// Parse the address without unmapping so the length is checked against
	// the written form.
	a, err := netip.ParseAddr(addrStr)
	if err != nil {
		var ok bool
		if a, ok = parseLegacyIPv4(addrStr); !ok {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: zone not allowed", s)
	}
	bits, err := strconv.Atoi(bitsStr)
	if err != nil || bits < 0 || bits > a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: bad prefix length", s)
	}
	if a.Is4In6() {
		if bits < 96 {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: mapped IPv4 with prefix length < 96", s)
		}
		a, bits = a.Unmap(), bits-96
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}

// ipFamilies records which address families a Service has cluster IPs of.
type ipFamilies struct{ v4, v6 bool }

func (f ipFamilies) has(a netip.Addr) bool {
	if a.Is4() {
		return f.v4
	}
	return f.v6
}

func (f *ipFamilies) add(a netip.Addr) {
	if a.Is4() {
		f.v4 = true
	} else {
		f.v6 = true
	}
}

func familyName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func familiesOf(addrs []netip.Addr) ipFamilies {
	var f ipFamilies
	for _, a := range addrs {
		f.add(a)
	}
	return f
}

// sortAddrs sorts and deduplicates in place; nil stays nil.
func sortAddrs(a []netip.Addr) []netip.Addr {
	slices.SortFunc(a, netip.Addr.Compare)
	return slices.Compact(a)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func sortPrefixes(p []netip.Prefix) []netip.Prefix {
	slices.SortFunc(p, comparePrefix)
	return slices.Compact(p)
}

// sortedSet returns the sorted distinct non-empty names, nil when none.
func sortedSet(names []string) []string {
	var out []string
	for _, n := range names {
		if n != "" {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
