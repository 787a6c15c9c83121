package ipvs

import (
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

func TestServiceMark(t *testing.T) {
	seen := map[uint32]int{}
	for i := range 2000 {
		for _, proto := range []Proto{ProtoTCP, ProtoUDP} {
			m := ServiceMark(key("ns", "svc-"+string(rune('a'+i%26))+string(rune('a'+i/26))), "http", proto)
			if !OwnedMark(m) || m&0xffff != 0 || m&(0x4000|0x8000) != 0 {
				t.Fatalf("mark %#x outside FWMarkMask", m)
			}
			if again := ServiceMark(key("ns", "svc-"+string(rune('a'+i%26))+string(rune('a'+i/26))), "http", proto); again != m {
				t.Fatalf("mark not stable: %#x then %#x", m, again)
			}
			seen[m]++
		}
	}
	if len(seen) < 3400 { // about 3550 expected from 16382 values
		t.Errorf("%d distinct marks for 4000 ports: the hash spreads badly", len(seen))
	}
	for _, m := range probeMarks {
		if OwnedMark(m) {
			t.Errorf("probe mark %#x is in our range", m)
		}
	}
	for _, m := range []uint32{0, 0x4000, 0x8000, 0xc000, 0x40000000, 0x10001, 0x18000} {
		if OwnedMark(m) {
			t.Errorf("OwnedMark(%#x) = true", m)
		}
	}
	if !OwnedMark(0x10000|MasqueradeMark) || !nodeMark(0x10000|MasqueradeMark) {
		t.Error("the node's variant of a mark is not ours")
	}
}

// TestPlanFWMark checks when a firewall-mark virtual server is planned and
// what its addresses map to.
func TestPlanFWMark(t *testing.T) {
	remote := func(s *servicecache.Service) { s.ExternalPolicyLocal = true }
	mk := func(eps ...servicecache.Endpoint) *servicecache.Service {
		s := svc("default", "lb", ips("10.96.0.1"), port("http", v1.ProtocolTCP, 80, 30080, eps...))
		s.LoadBalancerIPs = ips("198.51.100.1")
		s.ExternalIPs = ips("203.0.113.1")
		return s
	}
	onA := epAt(ep("10.244.1.2", 8080, "ready"), "node-a")
	onB := epAt(ep("10.244.2.2", 8080, "ready"), "node-b")
	mark := ServiceMark(key("default", "lb"), "http", ProtoTCP)
	fw := FWMarkKey(true, mark)
	tests := []struct {
		name     string
		svc      *servicecache.Service
		fallback bool
		want     []string // real servers of the firewall-mark server; nil: none
	}{
		{"endpoint on another node only", svcWith(mk(onB), remote), false, []string{"10.244.2.2:8080"}},
		{"local and remote", svcWith(mk(onA, onB), remote), false, []string{"10.244.1.2:8080", "10.244.2.2:8080"}},
		{"all local: same as cluster", svcWith(mk(onA), remote), false, nil},
		{"no endpoint", svcWith(mk(), remote), false, nil},
		{"fallback keeps upstream IPVS behaviour", svcWith(mk(onB), remote), true, nil},
		{"externalTrafficPolicy Cluster", mk(onB), false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := snapOnNode(&servicecache.Snapshot{Services: []*servicecache.Service{tt.svc}}, "node-a", "")
			d := Plan(snap, Config{NodePortAddresses: ips("192.168.1.10"), LocalFallbackToCluster: tt.fallback})
			vs := d.VirtualServers[fw]
			if tt.want == nil {
				if vs != nil {
					t.Fatalf("unexpected %s", vs)
				}
				if e := d.MarkEntries(); len(e) != 0 {
					t.Fatalf("mark entries %v", e)
				}
				return
			}
			if vs == nil {
				t.Fatalf("no firewall-mark virtual server:\n%s", d.Dump())
			}
			var got []string
			for _, rs := range vs.RealServers {
				got = append(got, rs.Key.String())
			}
			if !slices.Equal(got, tt.want) || vs.Bind || vs.Kind != KindFWMark {
				t.Errorf("%s: %v bind %v, want %v", vs, got, vs.Bind, tt.want)
			}
			if node := d.VirtualServers[FWMarkKey(true, mark|MasqueradeMark)]; node == nil || !slices.Equal(node.RealServers, vs.RealServers) {
				t.Errorf("the node's firewall-mark server %v differs from the pods' %v", node, vs)
			}
			var entries []string
			for _, e := range d.MarkEntries() {
				if e.Mark != mark {
					t.Errorf("%s: mark %#x, want %#x", e.Key, e.Mark, mark)
				}
				entries = append(entries, e.Key.String())
			}
			want := []string{"192.168.1.10:30080/TCP", "198.51.100.1:80/TCP", "203.0.113.1:80/TCP"}
			if !slices.Equal(entries, want) {
				t.Errorf("mark entries %v, want %v", entries, want)
			}
		})
	}
}

// TestFWMarkConflict: two ports of two Services hashing to the same mark
// (forced here) are settled like an address: the older keeps it, and
// only its addresses are marked.
func TestFWMarkConflict(t *testing.T) {
	older := svcWith(svc("default", "a", ips("10.96.0.1"), port("http", v1.ProtocolTCP, 80, 30080, epAt(ep("10.244.2.2", 80, "ready"), "node-b"))), setETPLocal)
	newer := svcWith(svc("default", "b", ips("10.96.0.2"), port("http", v1.ProtocolTCP, 80, 30081, epAt(ep("10.244.2.3", 80, "ready"), "node-b"))), setETPLocal)
	older.Created = time.Unix(1, 0)
	newer.Created = time.Unix(2, 0)
	snap := snapOnNode(&servicecache.Snapshot{Services: []*servicecache.Service{older, newer}}, "node-a", "")
	cfg := Config{NodePortAddresses: ips("192.168.1.10")}
	d := Plan(snap, cfg)
	// Move b's firewall-mark server onto a's mark, as a collision would.
	ma := ServiceMark(older.Key, "http", ProtoTCP)
	vsB := d.VirtualServers[FWMarkKey(true, ServiceMark(newer.Key, "http", ProtoTCP))]
	if vsB == nil {
		t.Fatalf("no firewall-mark server for b:\n%s", d.Dump())
	}
	moved := *vsB
	moved.Key = FWMarkKey(true, ma)
	as := assembly{d: newDesired(newPlanner(cfg, &snap.Node), 0, 2), snap: snap}
	vssA := d.ByService[older.Key]
	var vssB []*VirtualServer
	for _, vs := range d.ByService[newer.Key] {
		if vs == vsB {
			vs = &moved
		}
		vssB = append(vssB, vs)
	}
	as.add(newer, vssB)
	as.add(older, vssA)
	p := newPlanner(cfg, &snap.Node)
	as.finish(&p)
	got := as.d.VirtualServers[FWMarkKey(true, ma)]
	if got == nil || got.Service != older.Key {
		t.Fatalf("mark %#x held by %v, want %s", ma, got, older.Key)
	}
	for _, e := range as.d.MarkEntries() {
		if e.Key.Port == 30081 {
			t.Errorf("b's node port is marked for a's server: %v", e)
		}
	}
	if len(as.d.Problems) != 1 || as.d.Problems[0].Service != newer.Key {
		t.Errorf("problems %v, want one for %s", as.d.Problems, newer.Key)
	}
}

func TestDumpFWMark(t *testing.T) {
	st := &State{VirtualServers: map[VSKey]*VirtualServer{}}
	for _, k := range []VSKey{FWMarkKey(true, 0x10000), FWMarkKey(false, 0x20000)} {
		rs := RealServer{Key: RSKey{Addr: ip("10.244.1.2"), Port: 80}, Weight: 1}
		if k.Addr.Is6() {
			rs.Key.Addr = ip("fd00::2")
		}
		st.VirtualServers[k] = &VirtualServer{Key: k, Scheduler: "rr", Flags: FlagPersistent, Timeout: 10800, RealServers: []RealServer{rs}}
	}
	want := "-A -f 65536 -s rr -p 10800\n-a -f 65536 -r 10.244.1.2:80 -m -w 1\n" +
		"-A -f 131072 -6 -s rr -p 10800\n-a -f 131072 -6 -r [fd00::2]:80 -m -w 1\n"
	if got := st.DumpIPVS(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestDecodeFWMarkService(t *testing.T) {
	b := encodeGetServices(2)
	kernelService(b, 0, unix6, "0.0.0.0", 0, 0x10000, "rr", 0x2, 0, 1)
	kernelService(b, 1, unix6, "0.0.0.0", 0, 0x6b697076, "rr", 0x2, 0, 0) // a probe's: not ours
	list, _ := decodeServices(b)
	if len(list) != 2 || list[0].vs == nil || list[1].vs != nil {
		t.Fatalf("decoded %+v", list)
	}
	if got := list[0].vs.Key; got != FWMarkKey(true, 0x10000) {
		t.Errorf("key %v", got)
	}
	req := make([]byte, soDestsHeader+soDestLen)
	encodeGetDests(req, FWMarkKey(true, 0x10000), 1)
	if m := req[12:16]; m[0]|m[1]|m[2]|m[3] == 0 {
		t.Errorf("destination request without the mark: % x", req[:soDestsHeader])
	}
}

// unix6 is IPPROTO_TCP, which the kernel reports for firewall-mark services.
const unix6 = 6

// TestMarkFor: a port keeps the mark it holds, and a port whose mark is
// another's takes the next free one.
func TestMarkFor(t *testing.T) {
	a := MarkOwner{Service: key("default", "a"), Port: "http", Proto: ProtoTCP}
	b := MarkOwner{Service: key("default", "b"), Port: "http", Proto: ProtoTCP}
	hashB := ServiceMark(b.Service, b.Port, b.Proto)
	tests := []struct {
		name string
		held map[MarkOwner]uint32
		want uint32
	}{
		{"free: the hash", nil, hashB},
		{"held: kept", map[MarkOwner]uint32{b: 0x10000}, 0x10000},
		{"hash taken: the next", map[MarkOwner]uint32{a: hashB}, nextMark(hashB)},
		{"held mark not ours: the hash", map[MarkOwner]uint32{b: 0x4000}, hashB},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPlanner(Config{HeldMarks: tt.held}, nil)
			if got := p.markFor(b); got != tt.want {
				t.Errorf("mark %#x, want %#x", got, tt.want)
			}
			if again := p.markFor(b); again != tt.want {
				t.Errorf("second call %#x", again)
			}
		})
	}
	if got := nextMark(FWMarkMask); got != 1<<fwMarkShift {
		t.Errorf("nextMark wraps to %#x", got)
	}
}

// TestFWMarkOwnership: a firewall-mark virtual server is ours only on a
// mark inside FWMarkMask; Reconcile removes our stale ones and --cleanup
// ours, and both leave the others' alone.
func TestFWMarkOwnership(t *testing.T) {
	rs := RealServer{Key: RSKey{Addr: ip("10.244.1.2"), Port: 80}, Weight: 1}
	ours := []VSKey{FWMarkKey(true, 0x10000), FWMarkKey(true, 0x14000), FWMarkKey(false, 0x3ffe0000)}
	foreign := []VSKey{FWMarkKey(true, 0x4000), FWMarkKey(true, probeMarks[0]), FWMarkKey(true, 0x40010000), FWMarkKey(false, 1), FWMarkKey(true, 0x18000)}
	setup := func() *FakeIPVS {
		f := NewFakeIPVS(nil)
		for _, k := range slices.Concat(ours, foreign) {
			f.Put(&VirtualServer{Key: k, Scheduler: "rr", RealServers: []RealServer{rs}})
		}
		return f
	}
	left := func(t *testing.T, f *FakeIPVS) {
		t.Helper()
		vss, err := f.Services()
		if err != nil {
			t.Fatal(err)
		}
		var got []VSKey
		for _, vs := range vss {
			got = append(got, vs.Key)
		}
		want := slices.SortedFunc(slices.Values(foreign), VSKey.Compare)
		slices.SortFunc(got, VSKey.Compare)
		if !slices.Equal(got, want) {
			t.Errorf("left %v, want the others' %v", got, want)
		}
	}
	t.Run("reconcile", func(t *testing.T) {
		f := setup()
		if err := NewApplier(f, NewFakeLinks(nil)).Reconcile(&Desired{}); err != nil {
			t.Fatal(err)
		}
		left(t, f)
	})
	t.Run("cleanup", func(t *testing.T) {
		f := setup()
		if err := Cleanup(f, NewFakeLinks(nil), CleanupOptions{}); err != nil {
			t.Fatal(err)
		}
		left(t, f)
	})
}

// TestHeldMarksKept: an incremental plan of a Service keeps the marks the
// applier holds for it, even when another port now hashes to them.
func TestHeldMarksKept(t *testing.T) {
	s := svcWith(svc("default", "lb", ips("10.96.0.1"), port("http", v1.ProtocolTCP, 80, 30080, epAt(ep("10.244.2.2", 80, "ready"), "node-b"))), setETPLocal)
	snap := snapOnNode(&servicecache.Snapshot{Services: []*servicecache.Service{s}}, "node-a", "")
	cfg := Config{NodePortAddresses: ips("192.168.1.10")}
	a := NewApplier(NewFakeIPVS(nil), NewFakeLinks(nil))
	// As if an earlier plan had moved it off its hash.
	cfg.HeldMarks = map[MarkOwner]uint32{{Service: s.Key, Port: "http", Proto: ProtoTCP}: 0x20000}
	if err := a.Reconcile(Plan(snap, cfg)); err != nil {
		t.Fatal(err)
	}
	cfg.HeldMarks = a.HeldMarks()
	snap.Changed = []servicecache.ServiceKey{s.Key}
	d := PlanChanges(snap, snap.Changed, a.Held(snap.Changed), cfg)
	if err := a.ApplyServices(snap.Changed, d); err != nil {
		t.Fatal(err)
	}
	entries := a.MarkEntries()
	if len(entries) != 1 || entries[0].Mark != 0x20000 {
		t.Errorf("mark entries %v, want the node port's on 0x20000", entries)
	}
}
