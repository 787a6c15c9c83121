package conntrack

// Real-kernel tests: the netlink Cleaner against the kernel's conntrack
// table, each in a fresh network namespace. They need root (CAP_NET_ADMIN,
// CAP_SYS_ADMIN) and, for the DNAT test, the iptables tool; without them they
// fail (CI runs as root with iptables installed), they do not skip.

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// enterNewNetns moves the test goroutine's OS thread into a new network
// namespace and keeps it locked there: when the test ends the runtime
// destroys the thread, and the namespace with it. Netlink requests, sockets
// and processes started from this goroutine then live in the namespace.
// Subtests run on other goroutines, so these tests have none.
func enterNewNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("real-kernel conntrack test needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for a network namespace); run `go test` as root")
	}
	runtime.LockOSThread()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("creating network namespace: %v", err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("finding lo: %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("setting lo up: %v", err)
	}
}

func familyOf(a netip.Addr) netlink.InetFamily {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// create inserts e into the conntrack table, as
// `conntrack -I -p udp -s C -d F --sport c --dport f -r B -q C --reply-port-src b --reply-port-dst c -t 300`.
func create(t *testing.T, e Entry) {
	t.Helper()
	flow := &netlink.ConntrackFlow{
		FamilyType: uint8(familyOf(e.OrigDst.Addr())),
		Forward: netlink.IPTuple{
			Protocol: e.Protocol,
			SrcIP:    e.OrigSrc.Addr().AsSlice(), SrcPort: e.OrigSrc.Port(),
			DstIP: e.OrigDst.Addr().AsSlice(), DstPort: e.OrigDst.Port(),
		},
		Reverse: netlink.IPTuple{
			Protocol: e.Protocol,
			SrcIP:    e.ReplySrc.Addr().AsSlice(), SrcPort: e.ReplySrc.Port(),
			DstIP: e.ReplyDst.Addr().AsSlice(), DstPort: e.ReplyDst.Port(),
		},
		TimeOut: 300,
	}
	if e.Protocol == ProtoTCP {
		flow.ProtoInfo = &netlink.ProtoInfoTCP{State: 3} // ESTABLISHED
	}
	if err := netlink.ConntrackCreate(netlink.ConntrackTable, familyOf(e.OrigDst.Addr()), flow); err != nil {
		t.Fatalf("creating conntrack entry %v: %v (is nf_conntrack_netlink available?)", e, err)
	}
}

// table lists the namespace's conntrack entries of both families, sorted.
func table(t *testing.T) []Entry {
	t.Helper()
	var out []Entry
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			t.Fatalf("listing conntrack entries: %v", err)
		}
		for _, f := range flows {
			out = append(out, entryOf(f))
		}
	}
	sortEntries(out)
	return out
}

func sortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int { return strings.Compare(a.String(), b.String()) })
}

func dumpEntries(es []Entry) string {
	var b strings.Builder
	for _, e := range es {
		b.WriteString("  " + e.String() + "\n")
	}
	return b.String()
}

// Entries created through ctnetlink, filters from StaleEntries, deletion by
// the netlink Cleaner: exactly the stale entries go.
func TestNetlinkCleanerDeletesOnlyStaleEntries(t *testing.T) {
	enterNewNetns(t)

	dns := func(eps ...servicecache.Endpoint) *servicecache.Service {
		return svc(keyDNS, addrs("10.96.0.10", "fd00:96::10"), ports(udp("dns", 53, 30053, eps...)))
	}
	old := snap(
		dns(ep("10.244.1.5:5353"), ep("10.244.2.6:5353"), ep("[fd00:244::5]:5353"), ep("[fd00:244::6]:5353")),
		svc(keyWeb, addrs("10.96.0.30"), ports(udp("syslog", 514, 0, ep("10.244.3.5:514")))),
	)
	cur := snap(dns(ep("10.244.2.6:5353"), ep("[fd00:244::6]:5353")))

	stale := []Entry{
		entry("10.0.0.1:40001", "10.96.0.10:53", "10.244.1.5:5353"),        // to the removed endpoint
		entry("10.0.0.1:40002", "10.96.0.10:53", "10.96.0.10:53"),          // not DNATed
		entry("172.30.0.99:40003", "172.30.0.11:30053", "10.244.1.5:5353"), // NodePort
		entry("[fd00::1]:40004", "[fd00:96::10]:53", "[fd00:244::5]:5353"),
		entry("10.0.0.1:40005", "10.96.0.30:514", "10.244.3.5:514"), // deleted Service, DNATed
	}
	kept := []Entry{
		entry("10.0.0.1:41001", "10.96.0.10:53", "10.244.2.6:5353"), // serving endpoint
		entry("[fd00::1]:41002", "[fd00:96::10]:53", "[fd00:244::6]:5353"),
		entry("10.0.0.1:41003", "10.96.0.11:53", "10.244.1.5:5353"),       // another Service
		entry("10.0.0.1:41004", "10.96.0.10:54", "10.244.1.5:5353"),       // another port
		entry("10.0.0.1:41005", "192.168.1.1:30053", "192.168.1.1:30053"), // same port number, not a node address
		entry("10.0.0.1:41006", "10.96.0.30:514", "10.96.0.30:514"),       // deleted Service, not DNATed by it
	}
	tcpEntry := entry("10.0.0.1:41007", "10.96.0.10:53", "10.244.1.5:5353")
	tcpEntry.Protocol = ProtoTCP
	kept = append(kept, tcpEntry)

	for _, e := range slices.Concat(stale, kept) {
		create(t, e)
	}
	if got := table(t); len(got) != len(stale)+len(kept) {
		t.Fatalf("table after creating %d entries:\n%s", len(stale)+len(kept), dumpEntries(got))
	}

	filters := StaleEntries(old, cur, Changed(old, cur), nodeAddrs)
	if len(filters) == 0 {
		t.Fatal("no filters")
	}
	n, err := New().DeleteStale(filters)
	if err != nil {
		t.Fatalf("DeleteStale: %v", err)
	}
	got := table(t)
	want := slices.Clone(kept)
	sortEntries(want)
	if !slices.Equal(got, want) || n != len(stale) {
		t.Errorf("deleted %d, left:\n%swant %d deleted, left:\n%sfilters:\n%s", n, dumpEntries(got), len(stale), dumpEntries(want), dumpFilters(filters))
	}

	// Again: nothing more to delete.
	if n, err := New().DeleteStale(filters); err != nil || n != 0 {
		t.Errorf("second DeleteStale = %d, %v; want 0, nil", n, err)
	}
	// No filter: no work.
	if n, err := New().DeleteStale(nil); err != nil || n != 0 {
		t.Errorf("DeleteStale(nil) = %d, %v", n, err)
	}
}

// Real UDP flows through an iptables DNAT rule (one backend per client
// port), then one backend leaves the Service: only its flow's entry goes.
func TestNetlinkCleanerRealDNATFlows(t *testing.T) {
	enterNewNetns(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatalf("the DNAT test needs iptables (apt-get install -y iptables): %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	// The frontend is a local address, so the datagrams have a route.
	if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.96.0.40"), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatalf("adding 10.96.0.40 to lo: %v", err)
	}
	for _, rule := range [][]string{
		{"--sport", "40001", "--to-destination", "127.0.0.1:5353"},
		{"--sport", "40002", "--to-destination", "127.0.0.1:5354"},
	} {
		args := []string{"-w", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-d", "10.96.0.40", "--dport", "53",
			rule[0], rule[1], "-j", "DNAT", rule[2], rule[3]}
		cmd := exec.Command("iptables", args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("iptables %s: %v: %s", strings.Join(args, " "), err, stderr.String())
		}
	}

	// The backends receive, proving the flows went through the DNAT.
	var backends []*net.UDPConn
	for _, port := range []int{5353, 5354} {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		backends = append(backends, c)
	}
	for _, sport := range []int{40001, 40002} {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sport}, &net.UDPAddr{IP: net.IPv4(10, 96, 0, 40), Port: 53})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	buf := make([]byte, 16)
	for i, c := range backends {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("backend %d got nothing through the DNAT rule: %v", i, err)
		}
	}
	stale := entry("127.0.0.1:40001", "10.96.0.40:53", "127.0.0.1:5353")
	stay := entry("127.0.0.1:40002", "10.96.0.40:53", "127.0.0.1:5354")
	if got := table(t); !slices.Contains(got, stale) || !slices.Contains(got, stay) {
		t.Fatalf("the kernel did not record the DNATed flows as expected:\n%s", dumpEntries(got))
	}

	web := func(eps ...servicecache.Endpoint) *servicecache.Service {
		return svc(keyWeb, addrs("10.96.0.40"), ports(udp("dns", 53, 0, eps...)))
	}
	old := snap(web(ep("127.0.0.1:5353"), ep("127.0.0.1:5354")))
	cur := snap(web(ep("127.0.0.1:5354")))
	n, err := New().DeleteStale(StaleEntries(old, cur, cur.Changed, nil))
	if err != nil || n != 0 {
		t.Fatalf("with no changed Service: DeleteStale = %d, %v; want 0, nil", n, err)
	}
	n, err = New().DeleteStale(StaleEntries(old, cur, []servicecache.ServiceKey{keyWeb}, nil))
	if err != nil {
		t.Fatalf("DeleteStale: %v", err)
	}
	got := table(t)
	if n != 1 || slices.Contains(got, stale) || !slices.Contains(got, stay) {
		t.Errorf("deleted %d (want 1), left:\n%s", n, dumpEntries(got))
	}
}

// fakeDeleter scripts ConntrackDeleteFilters results.
type fakeDeleter struct {
	results  []fakeResult // one per call; the last one repeats
	families []netlink.InetFamily
}

type fakeResult struct {
	n   uint
	err error
}

func (f *fakeDeleter) ConntrackDeleteFilters(_ netlink.ConntrackTableType, family netlink.InetFamily, _ ...netlink.CustomConntrackFilter) (uint, error) {
	f.families = append(f.families, family)
	r := f.results[min(len(f.families), len(f.results))-1]
	return r.n, r.err
}

func TestNetlinkCleanerRetriesInterruptedDumps(t *testing.T) {
	v4 := []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), nil)}
	dual := []Filter{live(keyDNS, "dns", aps("10.96.0.10:53", "[fd00::10]:53"), nil)}
	boom := errors.New("boom")
	tests := []struct {
		name         string
		filters      []Filter
		results      []fakeResult
		wantN        int
		wantErr      bool
		wantFamilies []netlink.InetFamily
	}{
		{name: "no filter: no call", filters: nil, results: []fakeResult{{}}},
		{name: "one family", filters: v4, results: []fakeResult{{n: 2}}, wantN: 2, wantFamilies: []netlink.InetFamily{unix.AF_INET}},
		{name: "both families", filters: dual, results: []fakeResult{{n: 2}}, wantN: 4, wantFamilies: []netlink.InetFamily{unix.AF_INET, unix.AF_INET6}},
		{
			name: "interrupted dumps are retried, counts add up", filters: v4,
			results:      []fakeResult{{1, netlink.ErrDumpInterrupted}, {1, netlink.ErrDumpInterrupted}, {1, nil}},
			wantN:        3,
			wantFamilies: []netlink.InetFamily{unix.AF_INET, unix.AF_INET, unix.AF_INET},
		},
		{
			name: "always interrupted: gives up after maxDumpAttempts", filters: v4,
			results:      []fakeResult{{0, netlink.ErrDumpInterrupted}},
			wantErr:      true,
			wantFamilies: slices.Repeat([]netlink.InetFamily{unix.AF_INET}, maxDumpAttempts),
		},
		{
			name: "other errors are not retried, the other family still runs", filters: dual,
			results:      []fakeResult{{1, boom}, {1, nil}},
			wantN:        2,
			wantErr:      true,
			wantFamilies: []netlink.InetFamily{unix.AF_INET, unix.AF_INET6},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDeleter{results: tc.results}
			n, err := (&netlinkCleaner{h: d}).DeleteStale(tc.filters)
			if n != tc.wantN || (err != nil) != tc.wantErr || !slices.Equal(d.families, tc.wantFamilies) {
				t.Errorf("DeleteStale = %d, %v with families %v; want %d, error %v, families %v",
					n, err, d.families, tc.wantN, tc.wantErr, tc.wantFamilies)
			}
		})
	}
}
