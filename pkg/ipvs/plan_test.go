package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// describePlan is the golden text of a plan: its Dump, then which Service
// port, kind and binding each virtual server comes from.
func describePlan(d *Desired) string {
	var b strings.Builder
	b.WriteString(d.Dump())
	b.WriteString("# by service\n")
	svcs := slices.SortedFunc(maps.Keys(d.ByService), compareServiceKeys)
	for _, k := range svcs {
		for _, vs := range d.ByService[k] {
			bind := ""
			if vs.Bind {
				bind = " bind"
			}
			fmt.Fprintf(&b, "# %s:%s %s %s%s\n", vs.Service, vs.PortName, vs.Key, vs.Kind, bind)
		}
	}
	for _, a := range d.NodePortAddresses {
		fmt.Fprintf(&b, "# nodeport address %s\n", a)
	}
	return b.String()
}

func TestPlanGolden(t *testing.T) {
	nodeAddrs := ips("192.168.1.10", "fd00:1::10")
	tests := []struct {
		name string
		cfg  Config
		snap *servicecache.Snapshot
	}{{
		name: "empty",
		snap: snapshot(),
	}, {
		name: "clusterip",
		snap: snapshot(svc("default", "web", ips("10.96.0.20"),
			port("http", v1.ProtocolTCP, 80, 0,
				ep("10.244.1.2", 8080, "ready"),
				ep("10.244.1.3", 8080, "unready"),
				ep("10.244.2.7", 8080, "ready"),
				ep("10.244.3.1", 8080, "gone"),
			))),
	}, {
		name: "multi-port-protocols",
		snap: snapshot(svc("kube-system", "kube-dns", ips("10.96.0.10"),
			port("dns", v1.ProtocolUDP, 53, 0, ep("10.244.0.5", 53, "ready"), ep("10.244.0.6", 53, "ready")),
			port("dns-tcp", v1.ProtocolTCP, 53, 0, ep("10.244.0.5", 53, "ready"), ep("10.244.0.6", 53, "ready")),
			port("metrics", v1.ProtocolTCP, 9153, 0, ep("10.244.0.5", 9153, "ready")),
			port("sig", v1.ProtocolSCTP, 3868, 0, ep("10.244.0.5", 3868, "ready")),
		)),
	}, {
		name: "nodeport",
		cfg:  Config{NodePortAddresses: nodeAddrs},
		snap: snapshot(svc("default", "np", ips("10.96.5.5"),
			port("http", v1.ProtocolTCP, 80, 30080, ep("10.244.1.2", 8080, "ready")),
			port("udp", v1.ProtocolUDP, 81, 30081, ep("10.244.1.2", 8081, "ready")),
		)),
	}, {
		name: "dual-stack",
		cfg:  Config{NodePortAddresses: nodeAddrs},
		snap: snapshot(svc("default", "ds", ips("10.96.7.7", "fd00:96::7"),
			port("http", v1.ProtocolTCP, 80, 30007,
				ep("10.244.1.2", 8080, "ready"),
				ep("fd00:244::1:2", 8080, "ready"),
				ep("fd00:244::1:3", 8080, "unready"),
			))),
	}, {
		name: "external-and-lb",
		cfg:  Config{NodePortAddresses: ips("192.168.1.10"), LocalAddresses: ips("192.168.1.10", "192.168.2.20")},
		snap: snapshot(func() *servicecache.Service {
			s := svc("shop", "front", ips("10.96.9.9"), port("https", v1.ProtocolTCP, 443, 30443, ep("10.244.4.4", 8443, "ready")))
			s.Type = v1.ServiceTypeLoadBalancer
			// 192.168.2.20 is already on another interface: not bound.
			// 2001:db8::1 is IPv6 on an IPv4-only Service: skipped.
			s.ExternalIPs = ips("192.168.2.20", "203.0.113.7", "2001:db8::1")
			s.LoadBalancerIPs = ips("198.51.100.1")
			return s
		}()),
	}, {
		name: "affinity",
		snap: snapshot(func() *servicecache.Service {
			s := svc("default", "sticky", ips("10.96.3.3"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready")))
			s.AffinityTimeoutSeconds = 10800
			return s
		}()),
	}, {
		name: "terminating-fallback",
		snap: snapshot(
			// No ready endpoint: the serving terminating ones are used,
			// not the ones that stopped serving.
			svc("default", "rollout", ips("10.96.4.4"), port("http", v1.ProtocolTCP, 80, 0,
				ep("10.244.1.2", 80, "terminating"),
				ep("10.244.1.3", 80, "gone"),
				ep("10.244.1.4", 80, "unready"),
				ep("10.244.1.5", 80, "terminating"),
			)),
			// The fallback is per family: IPv4 has a ready endpoint.
			svc("default", "rollout-ds", ips("10.96.4.5", "fd00:96::4:5"), port("http", v1.ProtocolTCP, 80, 0,
				ep("10.244.1.2", 80, "ready"),
				ep("10.244.1.3", 80, "terminating"),
				ep("fd00:244::2", 80, "terminating"),
			)),
		),
	}, {
		name: "no-endpoints",
		snap: snapshot(svc("default", "empty", ips("10.96.8.8"), port("http", v1.ProtocolTCP, 80, 0))),
	}, {
		name: "scheduler-mh",
		cfg:  Config{Scheduler: "mh"},
		snap: snapshot(svc("default", "web", ips("10.96.0.20"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 8080, "ready")))),
	}, {
		name: "conflict-first-wins",
		snap: snapshot(
			func() *servicecache.Service {
				s := svc("a", "first", ips("10.96.1.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.1", 80, "ready")))
				s.ExternalIPs = ips("203.0.113.9")
				return s
			}(),
			func() *servicecache.Service {
				s := svc("b", "second", ips("10.96.1.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.2.2", 80, "ready")))
				s.ExternalIPs = ips("203.0.113.9")
				return s
			}(),
		),
	}, {
		name: "bad-input",
		cfg:  Config{NodePortAddresses: []netip.Addr{{}, ip("::ffff:192.168.1.10")}},
		snap: &servicecache.Snapshot{Services: []*servicecache.Service{
			{Key: key("default", "no-ips"), Ports: []servicecache.ServicePort{port("http", v1.ProtocolTCP, 80, 0)}},
			svc("default", "odd", []netip.Addr{{}, ip("0.0.0.0"), ip("::ffff:10.96.6.6")},
				port("no-proto", "ICMP", 1, 0, ep("10.244.1.1", 1, "ready")),
				port("zero", v1.ProtocolTCP, 0, 0, ep("10.244.1.1", 1, "ready")),
				port("ok", v1.ProtocolTCP, 80, 30000,
					servicecache.Endpoint{Addr: netip.Addr{}, Port: 80, Ready: true},
					ep("10.244.1.1", 0, "ready"),
					ep("10.244.1.9", 80, "ready"),
					ep("10.244.1.2", 80, "ready"), // unsorted and
					ep("10.244.1.2", 80, "ready"), // duplicated
				),
			),
		}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Plan(tt.snap, tt.cfg)
			got := describePlan(d)
			golden(t, "plan-"+tt.name, got)

			// Deterministic, and the incremental planner agrees.
			if again := describePlan(Plan(tt.snap, tt.cfg)); again != got {
				t.Errorf("second plan differs:\n%s", again)
			}
			var keys []servicecache.ServiceKey
			for _, s := range tt.snap.Services {
				if s != nil {
					keys = append(keys, s.Key)
				}
			}
			if part := describePlan(PlanServices(tt.snap, keys, tt.cfg)); part != got {
				t.Errorf("PlanServices of every service differs from Plan:\n%s", part)
			}
			checkPlanInvariants(t, d)
		})
	}
}

func checkPlanInvariants(t *testing.T, d *Desired) {
	t.Helper()
	n := 0
	for k, list := range d.ByService {
		for _, vs := range list {
			n++
			if vs.Service != k {
				t.Errorf("%s listed under %s", vs, k)
			}
			if d.VirtualServers[vs.Key] != vs {
				t.Errorf("%s in ByService but not in VirtualServers", vs)
			}
		}
	}
	if n != len(d.VirtualServers) {
		t.Errorf("ByService has %d servers, VirtualServers %d", n, len(d.VirtualServers))
	}
	if !strictlySorted(d.Addresses, netip.Addr.Compare) {
		t.Errorf("addresses not sorted and unique: %v", d.Addresses)
	}
	for _, vs := range d.VirtualServers {
		if !strictlySorted(vs.RealServers, compareRS) {
			t.Errorf("%s: real servers not sorted and unique", vs)
		}
		for _, rs := range vs.RealServers {
			if rs.Key.Addr.Is4() != vs.Key.Addr.Is4() {
				t.Errorf("%s: real server %s of the other family", vs, rs.Key)
			}
		}
		if vs.Bind && !slices.Contains(d.Addresses, vs.Key.Addr) {
			t.Errorf("%s: bound address missing from Addresses", vs)
		}
	}
}

func TestPlanServicesDeletedAndUnknown(t *testing.T) {
	snap := snapshot(svc("default", "web", ips("10.96.0.20"), port("http", v1.ProtocolTCP, 80, 0)))
	d := PlanServices(snap, []servicecache.ServiceKey{key("default", "gone"), key("default", "web")}, Config{})
	if _, ok := d.ByService[key("default", "gone")]; ok {
		t.Error("a deleted service has virtual servers")
	}
	if len(d.ByService[key("default", "web")]) != 1 {
		t.Errorf("web: %v", d.ByService)
	}
	if d := PlanServices(nil, []servicecache.ServiceKey{key("a", "b")}, Config{}); len(d.VirtualServers) != 0 {
		t.Error("nil snapshot planned something")
	}
	if d := Plan(nil, Config{}); len(d.VirtualServers) != 0 || d.Dump() != "" {
		t.Error("nil snapshot planned something")
	}
	if d := Plan(&servicecache.Snapshot{Services: []*servicecache.Service{nil}}, Config{}); len(d.VirtualServers) != 0 {
		t.Error("nil service planned something")
	}
	if got := PlanService(nil, Config{}); got != nil {
		t.Errorf("PlanService(nil) = %v", got)
	}
}

// TestPlanSharesRealServers checks that the virtual servers of one port and
// family share one real server slice rather than a copy each.
func TestPlanSharesRealServers(t *testing.T) {
	s := svc("default", "np", ips("10.96.5.5"), port("http", v1.ProtocolTCP, 80, 30080, ep("10.244.1.2", 8080, "ready")))
	s.ExternalIPs = ips("203.0.113.1")
	vss := PlanService(s, Config{NodePortAddresses: ips("192.168.1.10")})
	if len(vss) != 3 {
		t.Fatalf("got %d virtual servers", len(vss))
	}
	for _, vs := range vss[1:] {
		if &vs.RealServers[0] != &vss[0].RealServers[0] {
			t.Errorf("%s has its own copy of the real servers", vs)
		}
	}
}

// benchSnapshot has n services, each with two ports, a node port and
// three endpoints, on a dual-stack-free cluster.
func benchSnapshot(n int) *servicecache.Snapshot {
	svcs := make([]*servicecache.Service, n)
	for i := range svcs {
		vip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		var eps []servicecache.Endpoint
		for j := range 3 {
			eps = append(eps, servicecache.Endpoint{
				Addr: netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i*3 + j)}), Port: 8080, Ready: true, Serving: true,
			})
		}
		nodePort := uint16(0)
		if i%4 == 0 {
			nodePort = uint16(30000 + i%2000)
		}
		svcs[i] = &servicecache.Service{
			Key:        key(fmt.Sprintf("ns%d", i%50), fmt.Sprintf("svc%d", i)),
			ClusterIPs: []netip.Addr{vip},
			Ports: []servicecache.ServicePort{
				{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: nodePort, Endpoints: eps},
				{Name: "metrics", Protocol: v1.ProtocolTCP, Port: 9090, Endpoints: eps},
			},
		}
	}
	return snapshot(svcs...)
}

func BenchmarkPlan10k(b *testing.B) { benchmarkPlan(b, 10_000) }
func BenchmarkPlan50k(b *testing.B) { benchmarkPlan(b, 50_000) }

func benchmarkPlan(b *testing.B, n int) {
	snap := benchSnapshot(n)
	cfg := Config{NodePortAddresses: ips("192.168.1.10")}
	b.ReportAllocs()
	for b.Loop() {
		Plan(snap, cfg)
	}
}

func BenchmarkDiffNoChange50k(b *testing.B) {
	d := Plan(benchSnapshot(50_000), Config{NodePortAddresses: ips("192.168.1.10")})
	obs := &State{VirtualServers: maps.Clone(d.VirtualServers), Addresses: d.Addresses}
	b.ReportAllocs()
	for b.Loop() {
		if ops := Diff(obs, &d.State); len(ops) != 0 {
			b.Fatal(ops)
		}
	}
}
