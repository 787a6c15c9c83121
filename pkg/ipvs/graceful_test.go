package ipvs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// drainRig is an applier with graceful termination over fakes, with a
// clock the test moves. Its plans are built by hand, so that these tests
// depend on the applier only.
type drainRig struct {
	*rig
	now time.Time
	// foreign virtual servers are not compared with the memory.
	foreign func(VSKey) bool
}

func newDrainRig(timeout time.Duration, excluded func(netip.Addr) bool) *drainRig {
	r := newRig(Config{})
	d := &drainRig{rig: r, now: time.Unix(1_000_000, 0)}
	r.a = NewApplierWithOptions(r.ipvs, r.links, ApplierOptions{
		GracefulTerminationTimeout: timeout,
		Excluded:                   excluded,
		Now:                        func() time.Time { return d.now },
	})
	return d
}

var webKey = key("default", "web")

// webVS is the web Service's virtual server 10.96.0.20:80 of proto with
// the given real servers ("10.244.1.1:8080", or "...=0" for weight 0).
func webVS(proto string, rss ...string) *VirtualServer {
	return svcVS(webKey, "10.96.0.20:80/"+proto, rss...)
}

func svcVS(svc servicecache.ServiceKey, k string, rss ...string) *VirtualServer {
	return with(vs(k, rss...), func(v *VirtualServer) { v.Service, v.PortName = svc, "http" })
}

// desiredOf builds a plan: the virtual servers, their bound addresses and
// ByService.
func desiredOf(vss ...*VirtualServer) *Desired {
	d := &Desired{State: State{VirtualServers: map[VSKey]*VirtualServer{}}}
	for _, v := range vss {
		d.VirtualServers[v.Key] = v
		if v.Bind {
			d.Addresses = append(d.Addresses, v.Key.Addr)
		}
	}
	d.Addresses = sortedAddrs(d.Addresses)
	d.ByService = groupByService(d.VirtualServers)
	return d
}

// set applies d in full (Reconcile) or for the web Service only
// (ApplyServices), and checks that the applier's memory is the kernel.
func (d *drainRig) set(t *testing.T, via string, want *Desired) {
	t.Helper()
	var err error
	if via == "full" {
		err = d.a.Reconcile(want)
	} else {
		err = d.a.ApplyServices([]servicecache.ServiceKey{webKey}, want)
	}
	if err != nil {
		t.Fatalf("%s apply: %v", via, err)
	}
	d.consistent(t)
}

func (d *drainRig) process(t *testing.T) {
	t.Helper()
	if err := d.a.ProcessDraining(); err != nil {
		t.Fatalf("ProcessDraining: %v", err)
	}
	d.consistent(t)
}

func (d *drainRig) consistent(t *testing.T) {
	t.Helper()
	k := d.kernel(t)
	for key := range k.VirtualServers {
		if d.foreign != nil && d.foreign(key) {
			delete(k.VirtualServers, key)
		}
	}
	if obs, k := d.a.Observed().Dump(), k.Dump(); obs != k {
		t.Errorf("applier memory:\n%s\ndiffers from the kernel:\n%s", obs, k)
	}
}

// expect checks the ops since the last call and the number draining.
func (d *drainRig) expect(t *testing.T, draining int, ops ...string) {
	t.Helper()
	if got := d.log.Lines(); !slices.Equal(got, ops) {
		t.Errorf("ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(ops, "\n"))
	}
	d.log.Reset()
	if n := d.a.Draining(); n != draining {
		t.Errorf("Draining() = %d, want %d", n, draining)
	}
}

func (d *drainRig) kernelVS(t *testing.T, k string) string {
	t.Helper()
	key := vs(k).Key
	return (&State{VirtualServers: map[VSKey]*VirtualServer{key: d.kernel(t).VirtualServers[key]}}).DumpIPVS()
}

var vias = []string{"full", "incremental"}

const (
	rs1 = "10.244.1.1:8080"
	rs2 = "10.244.1.2:8080"
)

// TestGracefulRemoval covers what happens to a real server that is no
// longer wanted, by protocol, connections and setting.
func TestGracefulRemoval(t *testing.T) {
	for _, tc := range []struct {
		name     string
		proto    string
		timeout  time.Duration
		active   int
		inactive int
		ops      []string
		draining int
	}{
		{"TCP with connections drains", "TCP", time.Minute, 2, 1,
			[]string{"ipvsadm -e -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 0"}, 1},
		{"TCP with only closing connections drains", "TCP", time.Minute, 0, 3,
			[]string{"ipvsadm -e -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 0"}, 1},
		{"TCP without connections is deleted at once", "TCP", time.Minute, 0, 0,
			[]string{"ipvsadm -d -t 10.96.0.20:80 -r 10.244.1.1:8080"}, 0},
		{"UDP is deleted at once", "UDP", time.Minute, 5, 0,
			[]string{"ipvsadm -d -u 10.96.0.20:80 -r 10.244.1.1:8080"}, 0},
		{"SCTP is deleted at once", "SCTP", time.Minute, 5, 0,
			[]string{"ipvsadm -d --sctp-service 10.96.0.20:80 -r 10.244.1.1:8080"}, 0},
		{"no timeout: deleted at once", "TCP", 0, 5, 0,
			[]string{"ipvsadm -d -t 10.96.0.20:80 -r 10.244.1.1:8080"}, 0},
	} {
		for _, via := range vias {
			t.Run(tc.name+"/"+via, func(t *testing.T) {
				d := newDrainRig(tc.timeout, nil)
				d.set(t, "full", desiredOf(webVS(tc.proto, rs1, rs2)))
				d.log.Reset()
				d.ipvs.SetConnections(webVS(tc.proto).Key, vs("1.1.1.1:1/TCP", rs1).RealServers[0].Key, tc.active, tc.inactive)
				_, dumps0 := d.ipvs.Dumps()

				d.set(t, via, desiredOf(webVS(tc.proto, rs2)))
				d.expect(t, tc.draining, tc.ops...)
				_, dumps := d.ipvs.Dumps()
				wantDumps := 0
				if tc.proto == "TCP" && tc.timeout > 0 {
					wantDumps = 1 // the connections of that virtual server only
				}
				if dumps-dumps0 != wantDumps {
					t.Errorf("%d destination dumps, want %d", dumps-dumps0, wantDumps)
				}
			})
		}
	}
}

// TestGracefulLifecycle follows a draining real server to its end.
func TestGracefulLifecycle(t *testing.T) {
	drainOp := "ipvsadm -e -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 0"
	deleteOp := "ipvsadm -d -t 10.96.0.20:80 -r 10.244.1.1:8080"
	rk := RSKey{ip("10.244.1.1"), 8080}
	key := webVS("TCP").Key
	draining := `-A -t 10.96.0.20:80 -s rr
-a -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 0
-a -t 10.96.0.20:80 -r 10.244.1.2:8080 -m -w 1
`
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, d *drainRig, via string)
	}{
		{"deleted once its connections are gone", func(t *testing.T, d *drainRig, via string) {
			d.now = d.now.Add(10 * time.Second)
			d.process(t)
			d.expect(t, 1)
			d.ipvs.SetConnections(key, rk, 0, 1)
			d.process(t)
			d.expect(t, 1)
			d.ipvs.SetConnections(key, rk, 0, 0)
			d.process(t)
			d.expect(t, 0, deleteOp)
			d.process(t)
			d.expect(t, 0)
		}},
		{"deleted after the maximum wait even with connections", func(t *testing.T, d *drainRig, via string) {
			d.now = d.now.Add(time.Minute - time.Second)
			d.process(t)
			d.expect(t, 1)
			d.now = d.now.Add(time.Second)
			d.process(t)
			d.expect(t, 0, deleteOp)
		}},
		{"endpoint back: weight restored, not re-added", func(t *testing.T, d *drainRig, via string) {
			d.set(t, via, desiredOf(webVS("TCP", rs1, rs2)))
			d.expect(t, 0, "ipvsadm -e -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 1")
			// It is wanted again: it stays whatever its connections.
			d.now = d.now.Add(time.Hour)
			d.process(t)
			d.expect(t, 0)
			// And drains again when it goes again.
			d.set(t, via, desiredOf(webVS("TCP", rs2)))
			d.expect(t, 1, drainOp)
		}},
		{"applies and reconciles leave it alone", func(t *testing.T, d *drainRig, via string) {
			for _, v := range vias {
				d.set(t, v, desiredOf(webVS("TCP", rs2)))
				d.expect(t, 1)
			}
			// Another change of the Service keeps it draining too.
			d.set(t, via, desiredOf(webVS("TCP", rs2, "10.244.1.3:8080")))
			d.expect(t, 1, "ipvsadm -a -t 10.96.0.20:80 -r 10.244.1.3:8080 -m -w 1")
			if got := d.kernelVS(t, "10.96.0.20:80/TCP"); !strings.Contains(got, "-r 10.244.1.1:8080 -m -w 0\n") {
				t.Errorf("draining real server lost:\n%s", got)
			}
			// Someone puts its weight back: a reconcile drains it again.
			if err := d.ipvs.UpdateDestination(key, RealServer{Key: rk, Weight: 1}); err != nil {
				t.Fatal(err)
			}
			d.log.Reset()
			d.set(t, "full", desiredOf(webVS("TCP", rs2, "10.244.1.3:8080")))
			d.expect(t, 1, drainOp)
			// Its deadline is still the first one.
			d.now = d.now.Add(time.Minute)
			d.process(t)
			d.expect(t, 0, deleteOp)
		}},
		{"Service deleted: virtual server deleted at once", func(t *testing.T, d *drainRig, via string) {
			d.set(t, via, &Desired{})
			d.expect(t, 0, "ipvsadm -D -t 10.96.0.20:80", "ip addr del 10.96.0.20/32 dev kube-ipvs0")
			d.process(t)
			d.expect(t, 0)
			// Back later: nothing of the old draining is left.
			d.set(t, via, desiredOf(webVS("TCP", rs2)))
			d.expect(t, 0, "ip addr add 10.96.0.20/32 dev kube-ipvs0", "ipvsadm -A -t 10.96.0.20:80 -s rr",
				"ipvsadm -a -t 10.96.0.20:80 -r 10.244.1.2:8080 -m -w 1")
		}},
		{"deleted behind our back: forgotten", func(t *testing.T, d *drainRig, via string) {
			if err := d.ipvs.DeleteDestination(key, rk); err != nil {
				t.Fatal(err)
			}
			d.log.Reset()
			d.process(t)
			d.expect(t, 0)
		}},
		{"restart: a new applier drains it again", func(t *testing.T, d *drainRig, via string) {
			d2 := newDrainRig(time.Minute, nil)
			d2.ipvs, d2.links = d.ipvs, d.links
			d2.a = NewApplierWithOptions(d.ipvs, d.links, ApplierOptions{GracefulTerminationTimeout: time.Minute, Now: func() time.Time { return d2.now }})
			d2.log = d.log
			d2.set(t, "full", desiredOf(webVS("TCP", rs2)))
			d2.expect(t, 1) // weight 0 already: nothing to do
			if got := d2.kernelVS(t, "10.96.0.20:80/TCP"); got != draining {
				t.Errorf("kernel:\n%s\nwant:\n%s", got, draining)
			}
			d2.ipvs.SetConnections(key, rk, 0, 0)
			d2.process(t)
			d2.expect(t, 0, deleteOp)
		}},
	} {
		for _, via := range vias {
			t.Run(tc.name+"/"+via, func(t *testing.T) {
				d := newDrainRig(time.Minute, nil)
				d.set(t, "full", desiredOf(webVS("TCP", rs1, rs2)))
				d.log.Reset()
				d.ipvs.SetConnections(key, rk, 3, 0)
				d.set(t, via, desiredOf(webVS("TCP", rs2)))
				d.expect(t, 1, drainOp)
				if got := d.kernelVS(t, "10.96.0.20:80/TCP"); got != draining {
					t.Errorf("kernel:\n%s\nwant:\n%s", got, draining)
				}
				tc.run(t, d, via)
			})
		}
	}
}

// TestGracefulOneDumpPerVirtualServer checks that draining reads the
// connections of each draining virtual server, never the whole table.
func TestGracefulOneDumpPerVirtualServer(t *testing.T) {
	d := newDrainRig(time.Minute, nil)
	other := key("default", "other")
	full := desiredOf(webVS("TCP", rs1, rs2), svcVS(other, "10.96.0.30:80/TCP", rs1, rs2), svcVS(other, "10.96.0.31:80/TCP", rs1))
	d.set(t, "full", full)
	for _, k := range []string{"10.96.0.20:80/TCP", "10.96.0.30:80/TCP"} {
		for _, r := range []string{rs1, rs2} {
			d.ipvs.SetConnections(vs(k).Key, vs(k, r).RealServers[0].Key, 1, 0)
		}
	}
	d.set(t, "full", desiredOf(webVS("TCP"), svcVS(other, "10.96.0.30:80/TCP"), svcVS(other, "10.96.0.31:80/TCP", rs1)))
	if n := d.a.Draining(); n != 4 {
		t.Fatalf("Draining() = %d, want 4", n)
	}
	full0, dests0 := d.ipvs.Dumps()
	if err := d.a.ProcessDraining(); err != nil {
		t.Fatal(err)
	}
	full1, dests1 := d.ipvs.Dumps()
	if full1 != full0 || dests1-dests0 != 2 {
		t.Errorf("ProcessDraining made %d full and %d destination dumps, want 0 and 2", full1-full0, dests1-dests0)
	}
}

// TestGracefulFailures checks that failed drains and deletes are retried
// and that the memory stays right.
func TestGracefulFailures(t *testing.T) {
	key := webVS("TCP").Key
	rk := RSKey{ip("10.244.1.1"), 8080}
	drainOp := "ipvsadm -e -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 0"
	deleteOp := "ipvsadm -d -t 10.96.0.20:80 -r 10.244.1.1:8080"
	for _, via := range vias {
		t.Run(via, func(t *testing.T) {
			d := newDrainRig(time.Minute, nil)
			d.set(t, "full", desiredOf(webVS("TCP", rs1, rs2)))
			d.ipvs.SetConnections(key, rk, 1, 0)
			d.log.Reset()

			// The weight-0 update fails: the next apply tries it again.
			d.ipvs.FailOn(drainOp, errBoom)
			var err error
			if via == "full" {
				err = d.a.Reconcile(desiredOf(webVS("TCP", rs2)))
			} else {
				err = d.a.ApplyServices([]servicecache.ServiceKey{webKey}, desiredOf(webVS("TCP", rs2)))
			}
			if err != nil || len(d.a.Failures()) != 1 {
				t.Fatalf("error = %v, failures %v: want one failure of the Service", err, d.a.Failures())
			}
			d.consistent(t)
			d.ipvs.FailOn(drainOp, nil)
			d.log.Reset()
			d.now = d.now.Add(minRetry)
			if via == "full" {
				d.set(t, "full", desiredOf(webVS("TCP", rs2)))
			} else if err := d.a.ApplyServices(nil, nil); err != nil {
				t.Fatal(err)
			}
			d.expect(t, 1, drainOp)
			d.consistent(t)

			// Unreadable connections: nothing is deleted, the error is
			// reported, the next call goes on.
			d.ipvs.FailOn(FakeListDestinationsCmd(key), errBoom)
			d.ipvs.SetConnections(key, rk, 0, 0)
			if err := d.a.ProcessDraining(); !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "ipvsadm -Ln -t 10.96.0.20:80") {
				t.Errorf("ProcessDraining error = %v", err)
			}
			d.expect(t, 1)
			d.ipvs.FailOn(FakeListDestinationsCmd(key), nil)

			// A failed delete is tried again.
			d.ipvs.FailOn(deleteOp, errBoom)
			if err := d.a.ProcessDraining(); !errors.Is(err, errBoom) || !strings.Contains(err.Error(), "service default/web:http") {
				t.Errorf("ProcessDraining error = %v", err)
			}
			d.consistent(t)
			d.expect(t, 1, deleteOp+" # failed: boom")
			d.ipvs.FailOn(deleteOp, nil)
			// The retry of the failed op by the next apply changes nothing.
			if err := d.a.ApplyServices(nil, nil); err != nil {
				t.Fatal(err)
			}
			d.expect(t, 1)
			d.process(t)
			d.expect(t, 0, deleteOp)
		})
	}
}

// TestGracefulUnreadableConnectionsDrain: when the connections cannot be
// read at removal, the real server drains rather than losing them.
func TestGracefulUnreadableConnectionsDrain(t *testing.T) {
	d := newDrainRig(time.Minute, nil)
	d.set(t, "full", desiredOf(webVS("TCP", rs1, rs2)))
	d.log.Reset()
	d.ipvs.FailOn(FakeListDestinationsCmd(webVS("TCP").Key), errBoom)
	d.set(t, "incremental", desiredOf(webVS("TCP", rs2)))
	d.expect(t, 1, "ipvsadm -e -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 0")
	d.ipvs.FailOn(FakeListDestinationsCmd(webVS("TCP").Key), nil)
	d.process(t)
	d.expect(t, 0, "ipvsadm -d -t 10.96.0.20:80 -r 10.244.1.1:8080")
}

// TestApplierExcluded checks that virtual servers and addresses the
// exclude function reports are never deleted nor changed.
func TestApplierExcluded(t *testing.T) {
	excluded := func(a netip.Addr) bool {
		return netip.MustParsePrefix("10.96.5.0/24").Contains(a) || a == ip("192.168.1.10")
	}
	setup := func(d *drainRig) {
		d.links.SetAddresses(ip("10.96.5.5"), ip("10.96.0.99"))
		d.ipvs.Put(vs("10.96.5.5:80/TCP", "10.1.0.1:80"))       // excluded, on kube-ipvs0
		d.ipvs.Put(vs("192.168.1.10:31000/TCP", "10.1.0.1:80")) // excluded node address
		d.ipvs.Put(vs("10.96.0.99:80/TCP", "10.1.0.1:80"))      // stale, ours
	}
	plan := func() *Desired {
		p := desiredOf(webVS("TCP", rs1))
		p.NodePortAddresses = ips("192.168.1.10")
		return p
	}
	wantOps := []string{
		"ip addr add 10.96.0.20/32 dev kube-ipvs0",
		"ipvsadm -A -t 10.96.0.20:80 -s rr",
		"ipvsadm -a -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 1",
		"ipvsadm -D -t 10.96.0.99:80",
		"ip addr del 10.96.0.99/32 dev kube-ipvs0",
	}
	for _, tc := range []struct {
		name     string
		excluded func(netip.Addr) bool
		want     string
	}{
		{"excluded", excluded, `addr 10.96.0.20/32
addr 10.96.5.5/32
-A -t 10.96.0.20:80 -s rr
-a -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 1
-A -t 10.96.5.5:80 -s rr
-a -t 10.96.5.5:80 -r 10.1.0.1:80 -m -w 1
-A -t 192.168.1.10:31000 -s rr
-a -t 192.168.1.10:31000 -r 10.1.0.1:80 -m -w 1
`},
		// Without the exclusion, the same servers are ours and go.
		{"not excluded", nil, `addr 10.96.0.20/32
-A -t 10.96.0.20:80 -s rr
-a -t 10.96.0.20:80 -r 10.244.1.1:8080 -m -w 1
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDrainRig(time.Minute, tc.excluded)
			d.foreign = func(k VSKey) bool { return excluded(k.Addr) }
			setup(d)
			d.set(t, "full", plan())
			if tc.excluded != nil {
				d.expect(t, 0, wantOps...)
			}
			if got := d.kernel(t).Dump(); got != tc.want {
				t.Errorf("kernel:\n%s\nwant:\n%s", got, tc.want)
			}
			// Nothing more to do, and the excluded servers are not in
			// the applier's memory (they are not its own).
			d.log.Reset()
			d.set(t, "full", plan())
			d.expect(t, 0)
			for k := range d.a.Observed().VirtualServers {
				if tc.excluded != nil && tc.excluded(k.Addr) {
					t.Errorf("excluded %s in the applier's memory", k)
				}
			}
		})
	}

	// A server the plan had on an excluded address (before the exclusion
	// was planned) is left alone once the plan drops it.
	d := newDrainRig(time.Minute, excluded)
	ex := svcVS(webKey, "10.96.5.6:80/TCP", rs1)
	d.set(t, "full", desiredOf(webVS("TCP", rs1), ex))
	d.log.Reset()
	d.foreign = func(k VSKey) bool { return excluded(k.Addr) }
	d.set(t, "incremental", desiredOf(webVS("TCP", rs1)))
	d.expect(t, 0)
	if d.kernel(t).VirtualServers[ex.Key] == nil || !slices.Contains(d.kernel(t).Addresses, ip("10.96.5.6")) {
		t.Errorf("excluded server or address removed:\n%s", d.kernel(t).Dump())
	}
}

// TestGracefulRandom drives an applier with graceful termination through
// random changes of a few Services (endpoints, protocols, deletions),
// random connection counts, random kernel failures, full and incremental
// applies and draining steps, and checks after each step that the kernel
// holds exactly the plan plus the draining real servers at weight 0, and
// that the applier's memory is the kernel.
func TestGracefulRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	d := newDrainRig(30*time.Second, nil)
	const nSvc = 6
	svcKey := func(i int) servicecache.ServiceKey { return key("default", fmt.Sprintf("s%d", i)) }
	gen := func(i int) []*VirtualServer {
		proto := []string{"TCP", "TCP", "UDP", "SCTP"}[rng.IntN(4)]
		var rss []string
		for j := range 5 {
			if rng.IntN(2) == 0 {
				rss = append(rss, fmt.Sprintf("10.244.%d.%d:80", i, j))
			}
		}
		out := []*VirtualServer{svcVS(svcKey(i), fmt.Sprintf("10.96.0.%d:80/%s", i, proto), rss...)}
		if rng.IntN(2) == 0 {
			out = append(out, svcVS(svcKey(i), fmt.Sprintf("10.96.1.%d:443/TCP", i), rss...))
		}
		return out
	}
	live := map[int][]*VirtualServer{}
	plan := func() *Desired {
		var all []*VirtualServer
		for _, vss := range live {
			all = append(all, vss...)
		}
		return desiredOf(all...)
	}
	check := func(step int, what string) {
		t.Helper()
		d.consistent(t)
		k := d.kernel(t)
		want := plan()
		if len(k.VirtualServers) != len(want.VirtualServers) {
			t.Errorf("kernel has %d virtual servers, plan %d", len(k.VirtualServers), len(want.VirtualServers))
		}
		for key, w := range want.VirtualServers {
			have := k.VirtualServers[key]
			if have == nil {
				t.Errorf("%s missing", key)
				continue
			}
			wantRS := slices.Clone(w.RealServers)
			for rk := range d.a.draining[key] {
				if _, dup := findRealServer(wantRS, rk); dup {
					t.Errorf("%s %s both wanted and draining", key, rk)
				}
				wantRS = append(wantRS, RealServer{Key: rk})
			}
			slices.SortFunc(wantRS, compareRS)
			if !slices.Equal(have.RealServers, wantRS) {
				t.Errorf("%s real servers:\n%v\nwant:\n%v", key, have.RealServers, wantRS)
			}
			if !drains(key.Proto) && len(d.a.draining[key]) > 0 {
				t.Errorf("%s drains", key)
			}
		}
		if t.Failed() {
			t.Fatalf("step %d (%s)", step, what)
		}
	}

	for i := range nSvc / 2 {
		live[i] = gen(i)
	}
	d.set(t, "full", plan())
	failures, drained := 0, 0
	for step := range 300 {
		// Traffic comes and goes.
		for key, v := range d.kernel(t).VirtualServers {
			for _, rs := range v.RealServers {
				if rng.IntN(3) == 0 {
					d.ipvs.SetConnections(key, rs.Key, rng.IntN(2), rng.IntN(2))
				}
			}
		}
		var what string
		switch r := rng.IntN(10); {
		case r < 2:
			what = "process"
			d.now = d.now.Add(time.Duration(rng.IntN(20)) * time.Second)
			if err := d.a.ProcessDraining(); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		default:
			var changed []servicecache.ServiceKey
			for range 1 + rng.IntN(2) {
				i := rng.IntN(nSvc)
				if _, ok := live[i]; ok && rng.IntN(3) == 0 {
					delete(live, i)
				} else {
					live[i] = gen(i)
				}
				changed = append(changed, svcKey(i))
			}
			full := r == 9
			what = fmt.Sprintf("changed %v, full %v", changed, full)
			part := plan()
			var failing string
			if rng.IntN(4) == 0 {
				ops := Diff(d.a.Observed(), &part.State)
				if len(ops) > 0 {
					failing = ops[rng.IntN(len(ops))].String()
					d.ipvs.FailOn(failing, errBoom)
					d.links.FailOn(failing, errBoom)
				}
			}
			var err error
			if full {
				err = d.a.Reconcile(part)
			} else {
				err = d.a.ApplyServices(changed, part)
			}
			d.ipvs.FailOn(failing, nil)
			d.links.FailOn(failing, nil)
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			if !d.a.NextRetry().IsZero() {
				failures++
				d.now = d.a.NextRetry()
				if err := d.a.ApplyServices(nil, nil); err != nil {
					t.Fatalf("step %d: retry: %v", step, err)
				}
			}
		}
		check(step, what)
		drained = max(drained, d.a.Draining())
		if step%30 == 0 {
			d.log.Reset()
			d.set(t, "full", plan())
			for _, l := range d.log.Lines() {
				t.Errorf("step %d: reconcile found work: %s", step, l)
			}
		}
	}
	// In the end everything drains.
	d.now = d.now.Add(time.Minute)
	d.process(t)
	if n := d.a.Draining(); n != 0 {
		t.Errorf("%d still draining after the timeout", n)
	}
	check(-1, "final")
	if failures == 0 || drained == 0 {
		t.Errorf("failures %d, most draining at once %d: the test tests nothing", failures, drained)
	}
	t.Logf("%d failing steps, up to %d real servers draining", failures, drained)
}
