package proxy

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/guard"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// inIPSets reports whether any ipset entry is for addr.
func (f *fixture) inIPSets(addr string) bool {
	a := netip.MustParseAddr(addr)
	for _, s := range f.ipset.Sets {
		for e := range s.Entries {
			if e.IP == a {
				return true
			}
		}
	}
	return false
}

func (f *fixture) sync(t *testing.T, full bool, changed []servicecache.ServiceKey, svcs ...*servicecache.Service) {
	t.Helper()
	f.snaps.queue = []*servicecache.Snapshot{{Services: svcs, Node: node, Changed: changed}}
	if err := f.p.Sync(context.Background(), full); err != nil {
		t.Fatal(err)
	}
}

// An external IP on the node's own address is not programmed (neither in
// IPVS nor in the ipsets), the Service's other addresses are, and the
// refusal is one Warning Event, not one per sync.
func TestExternalIPOnTheNodeIsRefusedWithOneEvent(t *testing.T) {
	f := newFixture()
	ev := &fakeEvents{}
	f.p.opts.Events = ev
	svc := web("10.244.1.2")
	svc.UID = "uid-1"
	svc.ExternalIPs = []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("192.0.2.10")}

	for i, full := range []bool{true, false, true, false} {
		f.sync(t, full, []servicecache.ServiceKey{svc.Key}, svc)
		k := f.kernel(t)
		if strings.Contains(k, "172.30.0.11:80") {
			t.Fatalf("sync %d: the external IP on the node's address is programmed:\n%s", i, k)
		}
		for _, want := range []string{"-A -t 192.0.2.10:80 -s rr", "-a -t 192.0.2.10:80 -r 10.244.1.2:8080", "-a -t 10.96.0.10:80 -r 10.244.1.2:8080",
			"-a -t 172.30.0.11:30080 -r 10.244.1.2:8080"} {
			if !strings.Contains(k, want) {
				t.Fatalf("sync %d: %q missing: the rest of the Service must work:\n%s", i, want, k)
			}
		}
		if !f.inIPSets("192.0.2.10") {
			t.Fatalf("sync %d: the allowed external IP is in no ipset", i)
		}
		if want := []string{"default/web uid-1 " + guard.ReasonExternalIPRefused}; !slices.Equal(ev.got, want) {
			t.Fatalf("sync %d: events %q, want %q", i, ev.got, want)
		}
	}
	// The node's address as an external IP is in no ipset entry either
	// (it is there as a NodePort address only, with the node port).
	for _, s := range f.ipset.Sets {
		for e := range s.Entries {
			if e.IP == netip.MustParseAddr("172.30.0.11") && e.Port != 30080 {
				t.Errorf("ipset %s holds %+v", s.Spec.Name, e)
			}
		}
	}
}

// An endpoint on another Service's VIP is not a real server, while the
// Service's other endpoints are; when the other Service's external IP
// comes or goes, an incremental sync of that Service alone also updates
// the Service whose endpoint it is.
func TestEndpointOnAVIPIsRefused(t *testing.T) {
	f := newFixture()
	ev := &fakeEvents{}
	f.p.opts.Events = ev
	svc := web("10.244.1.2", "10.96.0.20", "192.0.2.30")
	other := &servicecache.Service{
		Key: servicecache.ServiceKey{Namespace: "default", Name: "other"}, Type: v1.ServiceTypeClusterIP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")},
		Ports:      []servicecache.ServicePort{{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53}},
	}
	f.sync(t, true, []servicecache.ServiceKey{other.Key, svc.Key}, other, svc)
	k := f.kernel(t)
	if strings.Contains(k, "-r 10.96.0.20:8080") || !strings.Contains(k, "-a -t 10.96.0.10:80 -r 10.244.1.2:8080") ||
		!strings.Contains(k, "-a -t 10.96.0.10:80 -r 192.0.2.30:8080") {
		t.Fatalf("kernel:\n%s", k)
	}
	wantEvents := []string{"default/web  " + guard.ReasonEndpointAddressRefused}
	if !slices.Equal(ev.got, wantEvents) {
		t.Fatalf("events %q, want %q", ev.got, wantEvents)
	}

	// other gets 192.0.2.30 as an external IP: web's endpoint there goes,
	// though only other changed.
	other2 := *other
	other2.ExternalIPs = []netip.Addr{netip.MustParseAddr("192.0.2.30")}
	f.sync(t, false, []servicecache.ServiceKey{other.Key}, &other2, svc)
	k = f.kernel(t)
	if strings.Contains(k, "-r 192.0.2.30:8080") || !strings.Contains(k, "-A -u 192.0.2.30:53") {
		t.Fatalf("after other took 192.0.2.30:\n%s", k)
	}
	wantEvents = append(wantEvents, "default/web  "+guard.ReasonEndpointAddressRefused)
	if !slices.Equal(ev.got, wantEvents) {
		t.Fatalf("events %q, want %q", ev.got, wantEvents)
	}

	// And back.
	f.sync(t, false, []servicecache.ServiceKey{other.Key}, other, svc)
	if k := f.kernel(t); !strings.Contains(k, "-a -t 10.96.0.10:80 -r 192.0.2.30:8080") || strings.Contains(k, "192.0.2.30:53") {
		t.Fatalf("after other gave 192.0.2.30 back:\n%s", k)
	}
	if !slices.Equal(ev.got, wantEvents) {
		t.Fatalf("events %q, want %q", ev.got, wantEvents)
	}
}

// The allowlist and the Service CIDR come from the configuration.
func TestGuardConfig(t *testing.T) {
	f := newFixture()
	f.p.cfg.Guard.AllowedCIDRs = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	f.p.cfg.Guard.ServiceCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")}
	svc := web("10.244.1.2", "10.96.9.9")
	svc.ExternalIPs = []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("198.51.100.10")}
	svc.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("10.244.7.7"), netip.MustParseAddr("192.0.2.20")}
	f.sync(t, true, []servicecache.ServiceKey{svc.Key}, svc)
	k := f.kernel(t)
	for _, refused := range []string{"198.51.100.10", "10.244.7.7", "10.96.9.9"} {
		if strings.Contains(k, refused) || f.inIPSets(refused) {
			t.Errorf("%s programmed:\n%s", refused, k)
		}
	}
	for _, want := range []string{"192.0.2.10:80", "192.0.2.20:80", "-r 10.244.1.2:8080"} {
		if !strings.Contains(k, want) {
			t.Errorf("%s missing:\n%s", want, k)
		}
	}
	if got := f.p.guardProblems.reported[svc.Key]; len(got) != 3 {
		t.Errorf("guard problems %v, want 3", got)
	}
}

// problemLog: each problem reported once while it lasts, and the Services
// whose problems changed returned.
func TestProblemLog(t *testing.T) {
	a := servicecache.ServiceKey{Namespace: "ns", Name: "a"}
	b := servicecache.ServiceKey{Namespace: "ns", Name: "b"}
	pa1 := problem{Service: a, Reason: "R", Message: "a1"}
	pa2 := problem{Service: a, Reason: "R", Message: "a2"}
	pb := problem{Service: b, Reason: "R", Message: "b"}
	snap := &servicecache.Snapshot{Services: []*servicecache.Service{{Key: a, UID: "ua"}, {Key: b, UID: "ub"}}}
	ev := &fakeEvents{}
	l := problemLog{logMessage: "test"}
	steps := []struct {
		name        string
		keys        []servicecache.ServiceKey
		probs       []problem
		wantChanged []servicecache.ServiceKey
		wantEvents  int // in all
	}{
		{"first", nil, []problem{pa1, pb}, []servicecache.ServiceKey{a, b}, 2},
		{"same", nil, []problem{pa1, pb}, nil, 2},
		{"one more for a", nil, []problem{pa1, pa2, pb}, []servicecache.ServiceKey{a}, 3},
		{"b's not in keys: kept", []servicecache.ServiceKey{a}, []problem{pa1, pa2}, nil, 3},
		{"b fixed", []servicecache.ServiceKey{b}, nil, []servicecache.ServiceKey{b}, 3},
		{"a's first fixed", nil, []problem{pa2}, []servicecache.ServiceKey{a}, 3},
		{"b back", nil, []problem{pa2, pb}, []servicecache.ServiceKey{b}, 4},
		{"all fixed", nil, nil, []servicecache.ServiceKey{a, b}, 4},
	}
	for _, st := range steps {
		if got := l.report(ev, snap, st.keys, st.probs); !slices.Equal(got, st.wantChanged) {
			t.Errorf("%s: changed %v, want %v", st.name, got, st.wantChanged)
		}
		if len(ev.got) != st.wantEvents {
			t.Errorf("%s: events %q, want %d", st.name, ev.got, st.wantEvents)
		}
	}
	if ev.got[0] != "ns/a ua R" || ev.got[1] != "ns/b ub R" {
		t.Errorf("events %q", ev.got)
	}
}
