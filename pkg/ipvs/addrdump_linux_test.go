//go:build linux

package ipvs

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/nldump"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func ifaddrMsg(family, prefixLen uint8, index uint32, attrs ...[]byte) []byte {
	b := []byte{family, prefixLen, 0, 0}
	b = binary.NativeEndian.AppendUint32(b, index)
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func TestParseHostAddr(t *testing.T) {
	v4 := netip.MustParseAddr("10.96.0.10").AsSlice()
	v6 := netip.MustParseAddr("fd00::10").AsSlice()
	peer := netip.MustParseAddr("192.0.2.1").AsSlice()
	for _, tc := range []struct {
		name string
		msg  []byte
		want string // "" : not taken
	}{
		{"IPv4 /32", ifaddrMsg(unix.AF_INET, 32, 7, genlAttr(nil, unix.IFA_ADDRESS, v4), genlAttr(nil, unix.IFA_LOCAL, v4)), "10.96.0.10"},
		{"IPv6 /128", ifaddrMsg(unix.AF_INET6, 128, 7, genlAttr(nil, unix.IFA_ADDRESS, v6)), "fd00::10"},
		{"another link", ifaddrMsg(unix.AF_INET, 32, 8, genlAttr(nil, unix.IFA_ADDRESS, v4)), ""},
		{"not a host prefix", ifaddrMsg(unix.AF_INET, 24, 7, genlAttr(nil, unix.IFA_ADDRESS, v4)), ""},
		{"point-to-point: the local address", ifaddrMsg(unix.AF_INET, 32, 7, genlAttr(nil, unix.IFA_ADDRESS, peer), genlAttr(nil, unix.IFA_LOCAL, v4)), "10.96.0.10"},
		{"too short", []byte{2, 32}, ""},
		{"no address", ifaddrMsg(unix.AF_INET, 32, 7), ""},
	} {
		addr, ok, err := parseHostAddr(tc.msg, 7)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		got := ""
		if ok {
			got = addr.String()
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestParseHostAddrMalformed(t *testing.T) {
	v4 := netip.MustParseAddr("10.96.0.10").AsSlice()
	good := genlAttr(nil, unix.IFA_ADDRESS, v4)
	for name, msg := range map[string][]byte{
		"attribute length below its header": ifaddrMsg(unix.AF_INET, 32, 7, good, []byte{2, 0, 1, 0}),
		"attribute past the message":        ifaddrMsg(unix.AF_INET, 32, 7, good[:7]),
	} {
		if _, _, err := parseHostAddr(msg, 7); err == nil || !strings.Contains(err.Error(), "bad netlink attribute length") {
			t.Errorf("%s: error %v, want a bad attribute length", name, err)
		}
	}
}

func TestParseHostAddrAllocatesNothing(t *testing.T) {
	v4 := netip.MustParseAddr("10.96.0.10").AsSlice()
	msg := ifaddrMsg(unix.AF_INET, 32, 7,
		genlAttr(nil, unix.IFA_ADDRESS, v4), genlAttr(nil, unix.IFA_LOCAL, v4),
		genlAttr(nil, unix.IFA_LABEL, []byte("kube-ipvs0\x00")), genlAttr(nil, unix.IFA_FLAGS, []byte{0x80, 0, 0, 0}))
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok, err := parseHostAddr(msg, 7); !ok || err != nil {
			t.Fatalf("parseHostAddr: %v, %v", ok, err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per address message, want 0", allocs)
	}
}

// newAddrNetns moves the test's OS thread into a new network namespace
// for the rest of the test (the thread is dropped with it at the end) and
// makes a veth pair a0/a1 there, a0's index returned. The host has no
// dummy links; the dump does not care about the link type.
func newAddrNetns(tb testing.TB) int {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatalf("real-kernel address dump test needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for a network namespace); run `go test` as root")
	}
	runtime.LockOSThread()
	ns, err := netns.New()
	if err != nil {
		tb.Fatalf("new network namespace: %v", err)
	}
	tb.Cleanup(func() { _ = ns.Close() })
	ipBatch(tb, "link add a0 type veth peer name a1\nlink set lo up\n")
	ifi, err := net.InterfaceByName("a0")
	if err != nil {
		tb.Fatal(err)
	}
	return ifi.Index
}

func ipBatch(tb testing.TB, cmds string) {
	tb.Helper()
	cmd := exec.Command("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(cmds)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("ip -batch: %v: %s", err, out)
	}
}

// hostAddrBatch adds n /32 addresses to a0, from 10.96.0.0 up.
func hostAddrBatch(n int) (string, []netip.Addr) {
	var b strings.Builder
	var want []netip.Addr
	a := netip.MustParseAddr("10.96.0.0")
	for range n {
		a = a.Next()
		fmt.Fprintf(&b, "addr add %s/32 dev a0\n", a)
		want = append(want, a)
	}
	return b.String(), want
}

// TestHostAddrsOfKernel dumps a link's addresses from the kernel: enough
// of them to span many datagrams, next to addresses it must leave out.
func TestHostAddrsOfKernel(t *testing.T) {
	idx := newAddrNetns(t)
	batch, want := hostAddrBatch(3000)
	ipBatch(t, batch+
		"addr add fd00::10/128 dev a0 nodad\n"+
		"addr add 192.168.7.1/24 dev a0\n"+ // not a host address
		"addr add 10.200.0.1/32 dev a1\n"+ // another link
		"addr add fd00::11/128 dev a1 nodad\n")
	want = append(want, netip.MustParseAddr("fd00::10"))
	for range 2 { // the second reuses the receive buffer
		got, err := hostAddrsOf(idx)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(got, netip.Addr.Compare)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %d addresses, want %d (first %v, want %v)", len(got), len(want), got[:min(3, len(got))], want[:3])
		}
	}
	if _, err := hostAddrsOf(idx + 1000); err != nil {
		t.Errorf("a missing link: %v, want no addresses", err)
	}
}

// TestStrictAddrDump checks how this kernel answers the filtered dump
// hostAddrsOf sends: only link idx's addresses when it takes
// NETLINK_GET_STRICT_CHK.
func TestStrictAddrDump(t *testing.T) {
	idx := newAddrNetns(t)
	ipBatch(t, "addr add 10.96.0.1/32 dev a0\naddr add 10.200.0.1/32 dev a1\n")
	c, err := nldump.Open(unix.NETLINK_ROUTE, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetStrictCheck(); err != nil {
		t.Skipf("kernel without NETLINK_GET_STRICT_CHK: %v", err)
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	msg := nl.NewIfAddrmsg(unix.AF_UNSPEC)
	msg.Index = uint32(idx)
	req.AddData(msg)
	n := 0
	err = c.Execute(req, unix.RTM_NEWADDR, func(msg []byte) error {
		n++
		if got := int(binary.NativeEndian.Uint32(msg[4:8])); got != idx {
			return fmt.Errorf("address of link %d in the dump of link %d", got, idx)
		}
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("%d addresses, error %v", n, err)
	}
}

// BenchmarkHostAddrsOf12000 is a full resync's kube-ipvs0 listing at
// 10,000 Services: 12,000 ClusterIPs.
func BenchmarkHostAddrsOf12000(b *testing.B) {
	idx := newAddrNetns(b)
	batch, want := hostAddrBatch(12000)
	ipBatch(b, batch)
	b.ReportAllocs()
	for b.Loop() {
		got, err := hostAddrsOf(idx)
		if err != nil || len(got) != len(want) {
			b.Fatalf("%d addresses, error %v", len(got), err)
		}
	}
}
