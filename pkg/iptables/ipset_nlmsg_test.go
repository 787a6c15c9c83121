package iptables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nlattr"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
)

// nla is one netlink attribute, padded.
func nla(typ uint16, val ...byte) []byte { return nlattr.Append(nil, typ, val...) }

func cat(bs ...[]byte) []byte { return slices.Concat(bs...) }

// nestedAddr is an IPSET_ATTR_IP or IPSET_ATTR_IP2 as the kernel lists it.
func nestedAddr(typ uint16, s string) []byte {
	a := netip.MustParseAddr(s)
	inner := uint16(nl.IPSET_ATTR_IPADDR_IPV4)
	if a.Is6() {
		inner = nl.IPSET_ATTR_IPADDR_IPV6
	}
	return nla(typ|uint16(nl.NLA_F_NESTED), nla(inner|uint16(nl.NLA_F_NET_BYTEORDER), a.AsSlice()...)...)
}

func portAttr(p uint16) []byte {
	return nla(nl.IPSET_ATTR_PORT|uint16(nl.NLA_F_NET_BYTEORDER), binary.BigEndian.AppendUint16(nil, p)...)
}

// entryData is one member of a hash:ip,port,net listing, with the
// attributes the kernel adds that we ignore.
func entryData(ip string, port uint16, net string, cidr uint8) []byte {
	return nla(nl.IPSET_ATTR_DATA|uint16(nl.NLA_F_NESTED), cat(
		nestedAddr(nl.IPSET_ATTR_IP, ip),
		portAttr(port),
		nla(nl.IPSET_ATTR_PROTO, 6),
		nestedAddr(nl.IPSET_ATTR_IP2, net),
		nla(nl.IPSET_ATTR_CIDR2, cidr),
		nla(nl.IPSET_ATTR_CADT_LINENO|uint16(nl.NLA_F_NET_BYTEORDER), 0, 0, 0, 0),
	)...)
}

func TestParseEntry(t *testing.T) {
	data := func(b []byte) []byte { return b[4:] } // IPSET_ATTR_DATA's payload
	for _, tc := range []struct {
		name    string
		typ     SetType
		in      []byte
		want    Entry
		wantErr string
	}{
		{name: "hash:ip,port,net", typ: HashIPPortNet, in: data(entryData("10.96.0.10", 80, "10.244.1.7", 24)),
			want: Entry{IP: netip.MustParseAddr("10.96.0.10"), Proto: 6, Port: 80, Net: netip.MustParsePrefix("10.244.1.0/24")}},
		{name: "hash:ip,port,ip IPv6", typ: HashIPPortIP,
			in:   cat(nestedAddr(nl.IPSET_ATTR_IP, "fd00::a"), portAttr(53), nla(nl.IPSET_ATTR_PROTO, 17), nestedAddr(nl.IPSET_ATTR_IP2, "fd00::b")),
			want: Entry{IP: netip.MustParseAddr("fd00::a"), Proto: 17, Port: 53, IP2: netip.MustParseAddr("fd00::b")}},
		{name: "bitmap:port", typ: BitmapPort, in: portAttr(30080), want: Entry{Port: 30080}},
		{name: "no network", typ: HashIPPortNet, in: nestedAddr(nl.IPSET_ATTR_IP, "10.0.0.1"), wantErr: "without a network"},
		{name: "short port", typ: HashIPPort, in: nla(nl.IPSET_ATTR_PORT, 1), wantErr: "short port"},
		{name: "short proto", typ: HashIPPort, in: nla(nl.IPSET_ATTR_PROTO), wantErr: "short proto"},
		{name: "short cidr2", typ: HashIPPortNet, in: nla(nl.IPSET_ATTR_CIDR2), wantErr: "short cidr2"},
		{name: "bad address length", typ: HashIP, in: nla(nl.IPSET_ATTR_IP, nla(nl.IPSET_ATTR_IPADDR_IPV4, 1, 2, 3)...),
			wantErr: "bad address attribute type 1 length 3"},
		{name: "bad nested attribute length", typ: HashIP, in: nla(nl.IPSET_ATTR_IP, 9, 0, 1, 0),
			wantErr: "bad netlink attribute length 9"},
		{name: "bad attribute length", typ: HashIP, in: cat(portAttr(1), []byte{2, 0, 1, 0}),
			wantErr: "bad netlink attribute length 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseEntry(tc.typ, tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestAppendListed(t *testing.T) {
	msg := cat(nla(nl.IPSET_ATTR_SETNAME, []byte("KUBE-LOOP-BACK\x00")...),
		nla(nl.IPSET_ATTR_ADT|uint16(nl.NLA_F_NESTED), cat(
			entryData("10.96.0.1", 1, "10.244.0.1", 32), entryData("10.96.0.2", 2, "10.244.0.2", 32))...))
	got, err := appendListed([]Entry{{Port: 9}}, HashIPPortNet, msg)
	if err != nil || len(got) != 3 || got[2].Port != 2 || got[2].Net != netip.MustParsePrefix("10.244.0.2/32") {
		t.Fatalf("got %+v, %v", got, err)
	}
	bad := cat(nla(nl.IPSET_ATTR_ADT|uint16(nl.NLA_F_NESTED), cat(entryData("10.96.0.1", 1, "10.244.0.1", 32), []byte{3, 0, 7, 0})...))
	if _, err := appendListed(nil, HashIPPortNet, bad); err == nil {
		t.Errorf("a bad attribute length in the ADT: no error")
	}
}

func TestParseEntryAllocatesNothing(t *testing.T) {
	in := entryData("10.96.0.10", 80, "10.244.1.7", 24)[4:]
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := parseEntry(HashIPPortNet, in); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per ipset entry, want 0", allocs)
	}
}

// listMessages is a synthetic `ipset list` answer of n hash:ip,port,net
// members, split over messages as the kernel does (about 32 KiB each).
func listMessages(n int) [][]byte {
	var msgs [][]byte
	var adt []byte
	flush := func() {
		msgs = append(msgs, cat(nla(nl.IPSET_ATTR_SETNAME, []byte("KUBE-LOOP-BACK\x00")...),
			nla(nl.IPSET_ATTR_ADT|uint16(nl.NLA_F_NESTED), adt...)))
		adt = nil
	}
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		adt = append(adt, entryData(a.String(), uint16(i), a.String(), 32)...)
		if len(adt) > 32000 {
			flush()
		}
	}
	flush()
	return msgs
}

// BenchmarkParseList10000 parses a 10,000-member listing already received.
func BenchmarkParseList10000(b *testing.B) {
	msgs := listMessages(10000)
	b.ReportAllocs()
	for b.Loop() {
		entries := make([]Entry, 0, 10000)
		for _, m := range msgs {
			var err error
			if entries, err = appendListed(entries, HashIPPortNet, m); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkListEntries10000 is `ipset list` of a 10,000-member set from
// the kernel, in a fresh network namespace.
func BenchmarkListEntries10000(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatalf("needs root for a network namespace")
	}
	runtime.LockOSThread() // the thread, and the namespace, end with the benchmark
	ns, err := netns.New()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ns.Close() })
	var in strings.Builder
	in.WriteString("create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536\n")
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)})
		fmt.Fprintf(&in, "add KUBE-LOOP-BACK %s,tcp:%d,%s\n", a, 1000+i%50000, a)
	}
	cmd := exec.Command("ipset", "restore")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("ipset restore: %v: %s", err, out)
	}
	s, err := NewNetlinkIPSet()
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	spec := SetSpec{Name: "KUBE-LOOP-BACK", Type: HashIPPortIP, Family: IPv4}
	b.ReportAllocs()
	for b.Loop() {
		got, err := s.ListEntries(spec)
		if err != nil || len(got) != 10000 {
			b.Fatalf("%d entries, error %v", len(got), err)
		}
	}
}
