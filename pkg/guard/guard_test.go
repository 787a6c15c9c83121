package guard

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func endpoints(ss ...string) []servicecache.Endpoint {
	var out []servicecache.Endpoint
	for _, s := range ss {
		out = append(out, servicecache.Endpoint{Addr: netip.MustParseAddr(s), Port: 8080, Ready: true, Serving: true})
	}
	return out
}

var (
	webKey   = servicecache.ServiceKey{Namespace: "default", Name: "web"}
	otherKey = servicecache.ServiceKey{Namespace: "default", Name: "other"}

	testNode = servicecache.Node{Name: "node1", Addresses: addrs("172.30.0.11", "fd00:172:30::11"),
		PodCIDRs: prefixes("10.244.1.0/24", "fd00:10:244:1::/64")}
	testConfig = Config{
		ClusterCIDRs: prefixes("10.244.0.0/16", "fd00:10:244::/56"),
	}
)

// other is a dual-stack Service with every kind of VIP, sorted before web.
func other() *servicecache.Service {
	return &servicecache.Service{Key: otherKey, Type: v1.ServiceTypeLoadBalancer,
		ClusterIPs:      addrs("10.96.0.20", "fd00:10:96::20"),
		ExternalIPs:     addrs("192.0.2.50", "2001:db8::50", "172.30.0.11"), // the last one is refused
		LoadBalancerIPs: addrs("198.51.100.50"),
		Ports:           []servicecache.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, Endpoints: endpoints("10.244.2.5", "fd00:10:244:2::5")}},
	}
}

// web is a dual-stack Service, with what a case sets.
func web(ext, lb, eps []string) *servicecache.Service {
	return &servicecache.Service{Key: webKey, Type: v1.ServiceTypeLoadBalancer,
		ClusterIPs:      addrs("10.96.0.10", "fd00:10:96::10"),
		ExternalIPs:     addrs(ext...),
		LoadBalancerIPs: addrs(lb...),
		Ports:           []servicecache.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, Endpoints: endpoints(eps...)}},
	}
}

func TestFilterAddresses(t *testing.T) {
	type refusal struct{ addr, reason, why string }
	ext := func(a, why string) refusal { return refusal{a, ReasonExternalIPRefused, why} }
	lb := func(a, why string) refusal { return refusal{a, ReasonLoadBalancerIPRefused, why} }
	ep := func(a, why string) refusal { return refusal{a, ReasonEndpointAddressRefused, why} }
	tests := []struct {
		name string
		cfg  func(*Config)
		// web's external IPs, load-balancer IPs and endpoint addresses
		ext, lb, eps []string
		// the refused ones, in the order reported; the rest must stay
		refused []refusal
	}{
		{name: "nothing refused", ext: []string{"192.0.2.10", "2001:db8::10"}, lb: []string{"198.51.100.10"},
			eps: []string{"10.244.1.2", "172.30.0.11", "fd00:10:244:1::2"}},

		{name: "external IP: IPv4 loopback", ext: []string{"127.0.0.1", "192.0.2.10"}, refused: []refusal{ext("127.0.0.1", "a loopback address")}},
		{name: "external IP: 127/8 is all loopback", ext: []string{"127.255.0.9"}, refused: []refusal{ext("127.255.0.9", "a loopback address")}},
		{name: "external IP: IPv6 loopback", ext: []string{"::1"}, refused: []refusal{ext("::1", "a loopback address")}},
		{name: "external IP: IPv4 link-local", ext: []string{"169.254.169.254"}, refused: []refusal{ext("169.254.169.254", "a link-local address")}},
		{name: "external IP: IPv6 link-local", ext: []string{"fe80::1"}, refused: []refusal{ext("fe80::1", "a link-local address")}},
		{name: "external IP: IPv4 unspecified", ext: []string{"0.0.0.0"}, refused: []refusal{ext("0.0.0.0", "the unspecified address")}},
		{name: "external IP: IPv6 unspecified", ext: []string{"::"}, refused: []refusal{ext("::", "the unspecified address")}},
		{name: "external IP: IPv4 multicast", ext: []string{"224.0.0.251"}, refused: []refusal{ext("224.0.0.251", "a multicast address")}},
		{name: "external IP: IPv6 multicast", ext: []string{"ff02::fb"}, refused: []refusal{ext("ff02::fb", "a multicast address")}},
		{name: "external IP: the Node's IPv4 address", ext: []string{"172.30.0.11"}, refused: []refusal{ext("172.30.0.11", "an address of this node")}},
		{name: "external IP: the Node's IPv6 address", ext: []string{"fd00:172:30::11"}, refused: []refusal{ext("fd00:172:30::11", "an address of this node")}},
		// A floating VIP (keepalived, kube-vip) sits on the interface of
		// the node holding it: only the Node object's addresses are the
		// node's own.
		{name: "external IP: another address on the host is fine", ext: []string{"172.30.0.100"}},
		{name: "external IP: IPv4 pod address", ext: []string{"10.244.3.4"}, refused: []refusal{ext("10.244.3.4", "in the cluster CIDR 10.244.0.0/16 (pod addresses)")}},
		{name: "external IP: IPv6 pod address", ext: []string{"fd00:10:244:3::4"}, refused: []refusal{ext("fd00:10:244:3::4", "in the cluster CIDR fd00:10:244::/56 (pod addresses)")}},
		{name: "external IP: the node's pod CIDR without --cluster-cidr", cfg: func(c *Config) { c.ClusterCIDRs = nil },
			ext: []string{"10.244.1.7", "10.244.3.4"}, refused: []refusal{ext("10.244.1.7", "in this node's pod CIDR 10.244.1.0/24")}},
		{name: "external IP: another Service's ClusterIP", ext: []string{"10.96.0.20"}, refused: []refusal{ext("10.96.0.20", "the ClusterIP of Service default/other")}},
		{name: "external IP: its own IPv6 ClusterIP", ext: []string{"fd00:10:96::10"}, refused: []refusal{ext("fd00:10:96::10", "the ClusterIP of Service default/web")}},
		{name: "external IP: unused Service address without --service-cidr", ext: []string{"10.96.7.7"}},
		{name: "external IP: Service CIDR", cfg: func(c *Config) { c.ServiceCIDRs = prefixes("10.96.0.0/16", "fd00:10:96::/112") },
			ext: []string{"10.96.7.7", "fd00:10:96::7"}, refused: []refusal{
				ext("10.96.7.7", "in the Service CIDR 10.96.0.0/16"), ext("fd00:10:96::7", "in the Service CIDR fd00:10:96::/112")}},
		{name: "external IP: another Service's external IP is fine", ext: []string{"192.0.2.50", "2001:db8::50"}},
		{name: "external IP: IPv4-mapped loopback", ext: []string{"::ffff:127.0.0.1"}, refused: []refusal{ext("::ffff:127.0.0.1", "a loopback address")}},

		{name: "allowlist: inside", cfg: func(c *Config) { c.AllowedCIDRs = prefixes("192.0.2.0/24", "2001:db8::/64") },
			ext: []string{"192.0.2.10", "2001:db8::10"}, lb: []string{"192.0.2.20"}},
		{name: "allowlist: outside", cfg: func(c *Config) { c.AllowedCIDRs = prefixes("192.0.2.0/24", "2001:db8::/64") },
			ext: []string{"192.0.2.10", "198.51.100.10", "2001:db8:1::10"}, lb: []string{"203.0.113.1"}, refused: []refusal{
				ext("198.51.100.10", "outside the ranges this proxy allows (--external-ip-allowed-cidrs 192.0.2.0/24,2001:db8::/64)"),
				ext("2001:db8:1::10", "outside the ranges this proxy allows"),
				lb("203.0.113.1", "outside the ranges this proxy allows")}},
		{name: "allowlist: does not allow a refused range", cfg: func(c *Config) { c.AllowedCIDRs = prefixes("0.0.0.0/0", "::/0") },
			ext: []string{"127.0.0.1", "172.30.0.11", "10.244.0.1", "192.0.2.10"}, refused: []refusal{
				ext("127.0.0.1", "loopback"), ext("172.30.0.11", "an address of this node"), ext("10.244.0.1", "cluster CIDR")}},

		{name: "load-balancer IP: loopback", lb: []string{"127.0.0.1", "198.51.100.10"}, refused: []refusal{lb("127.0.0.1", "a loopback address")}},
		{name: "load-balancer IP: link-local", lb: []string{"fe80::5"}, refused: []refusal{lb("fe80::5", "a link-local address")}},
		{name: "load-balancer IP: the node's address", lb: []string{"fd00:172:30::11"}, refused: []refusal{lb("fd00:172:30::11", "an address of this node")}},
		{name: "load-balancer IP: pod address", lb: []string{"10.244.9.9"}, refused: []refusal{lb("10.244.9.9", "cluster CIDR")}},
		{name: "load-balancer IP: a ClusterIP", lb: []string{"fd00:10:96::20"}, refused: []refusal{lb("fd00:10:96::20", "the ClusterIP of Service default/other")}},
		{name: "load-balancer IP: multicast", lb: []string{"239.1.1.1"}, refused: []refusal{lb("239.1.1.1", "a multicast address")}},
		{name: "load-balancer IP: unspecified", lb: []string{"::"}, refused: []refusal{lb("::", "the unspecified address")}},

		{name: "endpoint: IPv4 loopback", eps: []string{"10.244.1.2", "127.0.0.1"}, refused: []refusal{ep("127.0.0.1", "a loopback address")}},
		{name: "endpoint: IPv6 loopback", eps: []string{"::1", "fd00:10:244:1::2"}, refused: []refusal{ep("::1", "a loopback address")}},
		{name: "endpoint: IPv4 link-local (cloud metadata)", eps: []string{"169.254.169.254"}, refused: []refusal{ep("169.254.169.254", "a link-local address")}},
		{name: "endpoint: IPv6 link-local", eps: []string{"fe80::a"}, refused: []refusal{ep("fe80::a", "a link-local address")}},
		{name: "endpoint: unspecified", eps: []string{"0.0.0.0", "::"}, refused: []refusal{
			ep("0.0.0.0", "the unspecified address"), ep("::", "the unspecified address")}},
		{name: "endpoint: multicast", eps: []string{"224.0.0.5", "ff05::2"}, refused: []refusal{
			ep("224.0.0.5", "a multicast address"), ep("ff05::2", "a multicast address")}},
		{name: "endpoint: another Service's ClusterIP", eps: []string{"10.96.0.20", "fd00:10:96::20"}, refused: []refusal{
			ep("10.96.0.20", "a ClusterIP of Service default/other"), ep("fd00:10:96::20", "a ClusterIP of Service default/other")}},
		{name: "endpoint: its own ClusterIP", eps: []string{"10.96.0.10"}, refused: []refusal{ep("10.96.0.10", "a ClusterIP of Service default/web")}},
		{name: "endpoint: another Service's external IP", eps: []string{"192.0.2.50", "2001:db8::50"}, refused: []refusal{
			ep("192.0.2.50", "an external IP of Service default/other"), ep("2001:db8::50", "an external IP of Service default/other")}},
		{name: "endpoint: another Service's load-balancer IP", eps: []string{"198.51.100.50"}, refused: []refusal{ep("198.51.100.50", "a load-balancer IP of Service default/other")}},
		{name: "endpoint: its own external IP", ext: []string{"192.0.2.10"}, eps: []string{"192.0.2.10"}, refused: []refusal{ep("192.0.2.10", "an external IP of Service default/web")}},
		// other's external IP 172.30.0.11 is refused, so it is no VIP: a
		// host-network pod on the node stays an endpoint.
		{name: "endpoint: the node's address (host network)", eps: []string{"172.30.0.11", "fd00:172:30::11"}},
		{name: "endpoint: unused Service address without --service-cidr", eps: []string{"10.96.7.7"}},
		{name: "endpoint: Service CIDR", cfg: func(c *Config) { c.ServiceCIDRs = prefixes("10.96.0.0/16") },
			eps: []string{"10.96.7.7", "10.244.1.2"}, refused: []refusal{ep("10.96.7.7", "in the Service CIDR 10.96.0.0/16")}},

		{name: "everything at once", ext: []string{"127.0.0.1", "192.0.2.10"}, lb: []string{"10.244.0.9", "198.51.100.10"},
			eps: []string{"10.244.1.2", "169.254.0.1"}, refused: []refusal{
				ext("127.0.0.1", "loopback"), lb("10.244.0.9", "cluster CIDR"), ep("169.254.0.1", "link-local")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			in := web(tt.ext, tt.lb, tt.eps)
			snap := &servicecache.Snapshot{Services: []*servicecache.Service{other(), in}, Node: testNode}
			out, probs := Filter(snap, cfg)

			// other loses its external IP on the node's address, always.
			if len(probs) == 0 || probs[0].Service != otherKey || !strings.Contains(probs[0].Message, "external IP 172.30.0.11 not programmed: it is an address of this node") {
				t.Fatalf("first problem %v, want other's external IP on the node's address", probs)
			}
			if got := out.Services[0].ExternalIPs; !reflect.DeepEqual(got, addrs("192.0.2.50", "2001:db8::50")) {
				t.Errorf("other's external IPs %v", got)
			}
			for len(probs) > 0 && probs[0].Service == otherKey {
				probs = probs[1:]
			}

			if len(probs) != len(tt.refused) {
				t.Fatalf("problems:\n%s\nwant %d", strings.Join(strs(probs), "\n"), len(tt.refused))
			}
			gone := map[string]bool{}
			for i, r := range tt.refused {
				p := probs[i]
				wantMsg := "it is " + r.why
				if p.Service != webKey || p.Reason != r.reason || !strings.Contains(p.Message, " "+r.addr+" ") || !strings.Contains(p.Message, r.why) {
					t.Errorf("problem %d: %s (%s), want %s of %s: %s", i, p, p.Reason, r.reason, r.addr, wantMsg)
				}
				cve := "CVE-2020-8554"
				if r.reason == ReasonEndpointAddressRefused {
					cve = "CVE-2021-25740"
				}
				if !strings.Contains(p.Message, cve) {
					t.Errorf("problem %d: %q does not name %s", i, p.Message, cve)
				}
				gone[r.reason+" "+r.addr] = true
			}
			keep := func(reason string, list []string) []netip.Addr {
				var out []netip.Addr
				for _, a := range list {
					if !gone[reason+" "+a] {
						out = append(out, netip.MustParseAddr(a))
					}
				}
				return out
			}
			got := out.Services[1]
			if !reflect.DeepEqual(got.ExternalIPs, keep(ReasonExternalIPRefused, tt.ext)) {
				t.Errorf("external IPs %v, want %v", got.ExternalIPs, keep(ReasonExternalIPRefused, tt.ext))
			}
			if !reflect.DeepEqual(got.LoadBalancerIPs, keep(ReasonLoadBalancerIPRefused, tt.lb)) {
				t.Errorf("load-balancer IPs %v, want %v", got.LoadBalancerIPs, keep(ReasonLoadBalancerIPRefused, tt.lb))
			}
			var gotEps []netip.Addr
			for _, e := range got.Ports[0].Endpoints {
				gotEps = append(gotEps, e.Addr)
			}
			if !reflect.DeepEqual(gotEps, keep(ReasonEndpointAddressRefused, tt.eps)) {
				t.Errorf("endpoints %v, want %v", gotEps, keep(ReasonEndpointAddressRefused, tt.eps))
			}
			if len(tt.refused) == 0 && got != in {
				t.Error("web lost nothing but was copied")
			}
			if !reflect.DeepEqual(in, web(tt.ext, tt.lb, tt.eps)) {
				t.Error("the input Service was modified")
			}
		})
	}
}

func strs(probs []Problem) []string {
	var out []string
	for _, p := range probs {
		out = append(out, p.Reason+" "+p.String())
	}
	return out
}

// Unchanged Services are shared, a changed one is a copy, nothing of the
// input changes, and the snapshot's other fields are kept.
func TestFilterSharesAndKeepsTheSnapshot(t *testing.T) {
	a := &servicecache.Service{Key: servicecache.ServiceKey{Namespace: "a", Name: "a"}, ClusterIPs: addrs("10.96.0.1"),
		Ports: []servicecache.ServicePort{{Name: "x", Port: 1, Endpoints: endpoints("10.244.1.1")}}}
	b := &servicecache.Service{Key: servicecache.ServiceKey{Namespace: "b", Name: "b"}, ClusterIPs: addrs("10.96.0.2"),
		Ports: []servicecache.ServicePort{
			{Name: "x", Port: 1, Endpoints: endpoints("10.244.1.1", "127.0.0.1")},
			{Name: "y", Port: 2, Endpoints: endpoints("10.244.1.2")},
			{Name: "z", Port: 3, Endpoints: endpoints("127.0.0.1")},
		}}
	c := &servicecache.Service{Key: servicecache.ServiceKey{Namespace: "c", Name: "c"}, ClusterIPs: addrs("10.96.0.3"),
		ExternalIPs: addrs("192.0.2.1")}
	trigger := map[servicecache.ServiceKey]time.Time{b.Key: time.Unix(100, 0)}
	snap := &servicecache.Snapshot{Services: []*servicecache.Service{a, b, c}, Node: testNode,
		Changed: []servicecache.ServiceKey{a.Key, b.Key}, TriggerTimes: trigger}
	before := deepCopy(snap)

	out, probs := Filter(snap, testConfig)
	if !reflect.DeepEqual(snap, before) {
		t.Fatal("the input snapshot was modified")
	}
	if out == snap || &out.Services[0] == &snap.Services[0] {
		t.Fatal("a changed snapshot must be a new one with its own Services slice")
	}
	if out.Services[0] != a || out.Services[2] != c {
		t.Error("unchanged Services are not shared")
	}
	if out.Services[1] == b {
		t.Fatal("the changed Service is not a copy")
	}
	if !reflect.DeepEqual(out.Changed, snap.Changed) || &out.Changed[0] != &snap.Changed[0] ||
		!reflect.DeepEqual(out.TriggerTimes, trigger) || !reflect.DeepEqual(out.Node, testNode) {
		t.Errorf("Changed, TriggerTimes or Node not kept: %+v", out)
	}
	// One problem for the address, though two ports had it.
	if len(probs) != 1 || probs[0].Service != b.Key || probs[0].Reason != ReasonEndpointAddressRefused {
		t.Fatalf("problems %v", strs(probs))
	}
	ports := out.Services[1].Ports
	if !reflect.DeepEqual(ports[0].Endpoints, endpoints("10.244.1.1")) || ports[2].Endpoints != nil {
		t.Errorf("ports %+v", ports)
	}
	if &ports[1].Endpoints[0] != &b.Ports[1].Endpoints[0] {
		t.Error("a port that lost nothing should share its endpoints")
	}
	if out.Services[1].Key != b.Key || &out.Services[1].ClusterIPs[0] != &b.ClusterIPs[0] {
		t.Error("the copy lost b's other fields")
	}

	// Nothing refused: the snapshot itself.
	clean := &servicecache.Snapshot{Services: []*servicecache.Service{a, c}, Node: testNode, Changed: snap.Changed}
	if out, probs := Filter(clean, testConfig); out != clean || probs != nil {
		t.Errorf("nothing refused: got a new snapshot (%v) or problems %v", out != clean, probs)
	}
	// No Services at all.
	empty := &servicecache.Snapshot{Node: testNode}
	if out, probs := Filter(empty, Config{}); out != empty || probs != nil {
		t.Error("empty snapshot")
	}
}

func deepCopy(s *servicecache.Snapshot) *servicecache.Snapshot {
	c := *s
	c.Services = nil
	for _, svc := range s.Services {
		sc := *svc
		sc.ClusterIPs = append([]netip.Addr(nil), svc.ClusterIPs...)
		sc.ExternalIPs = append([]netip.Addr(nil), svc.ExternalIPs...)
		sc.LoadBalancerIPs = append([]netip.Addr(nil), svc.LoadBalancerIPs...)
		sc.Ports = nil
		for _, p := range svc.Ports {
			p.Endpoints = append([]servicecache.Endpoint(nil), p.Endpoints...)
			sc.Ports = append(sc.Ports, p)
		}
		c.Services = append(c.Services, &sc)
	}
	c.Changed = append([]servicecache.ServiceKey(nil), s.Changed...)
	return &c
}

// A dual-stack Service keeps the family whose addresses are fine when the
// other family's are refused, and a Service that loses every address of a
// kind has none (nil) left.
func TestFilterDualStack(t *testing.T) {
	svc := &servicecache.Service{Key: webKey, ClusterIPs: addrs("10.96.0.10", "fd00:10:96::10"),
		ExternalIPs:     addrs("192.0.2.10", "fd00:10:244::9"),
		LoadBalancerIPs: addrs("fe80::1"),
		Ports: []servicecache.ServicePort{
			{Name: "a", Protocol: v1.ProtocolTCP, Port: 80, Endpoints: endpoints("10.244.1.2", "::1", "fd00:10:244:1::2")},
			{Name: "b", Protocol: v1.ProtocolUDP, Port: 53, Endpoints: endpoints("::1")},
		}}
	out, probs := Filter(&servicecache.Snapshot{Services: []*servicecache.Service{svc}, Node: testNode}, testConfig)
	got := out.Services[0]
	if !reflect.DeepEqual(got.ExternalIPs, addrs("192.0.2.10")) || got.LoadBalancerIPs != nil {
		t.Errorf("external %v, load-balancer %v", got.ExternalIPs, got.LoadBalancerIPs)
	}
	if !reflect.DeepEqual(got.Ports[0].Endpoints, endpoints("10.244.1.2", "fd00:10:244:1::2")) || got.Ports[1].Endpoints != nil {
		t.Errorf("ports %+v", got.Ports)
	}
	want := []string{
		ReasonExternalIPRefused + " default/web: external IP fd00:10:244::9 not programmed: it is in the cluster CIDR fd00:10:244::/56 (pod addresses). External and load-balancer IPs may not take over traffic meant for the node, pods or Services (CVE-2020-8554)",
		ReasonLoadBalancerIPRefused + " default/web: load-balancer IP fe80::1 not programmed: it is a link-local address. External and load-balancer IPs may not take over traffic meant for the node, pods or Services (CVE-2020-8554)",
		ReasonEndpointAddressRefused + " default/web: endpoint address ::1 not used: it is a loopback address. Endpoints may not point at loopback, link-local, unspecified, multicast or Service addresses (CVE-2021-25740)",
	}
	if !reflect.DeepEqual(strs(probs), want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(strs(probs), "\n"), strings.Join(want, "\n"))
	}
}

// The same snapshot gives the same problems, in the same order: the
// proxier reports each problem once by comparing them across syncs.
func TestFilterIsDeterministic(t *testing.T) {
	snap := &servicecache.Snapshot{Services: []*servicecache.Service{other(), web([]string{"127.0.0.1", "10.96.0.20"}, []string{"::1"}, []string{"10.96.0.20", "198.51.100.50"})}, Node: testNode}
	_, first := Filter(snap, testConfig)
	for range 5 {
		if _, again := Filter(snap, testConfig); !reflect.DeepEqual(again, first) {
			t.Fatalf("problems differ between calls:\n%v\n%v", strs(first), strs(again))
		}
	}
}
