package iptables

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
	v1 "k8s.io/api/core/v1"
)

func singleService(s *servicecache.Service) *servicecache.Snapshot {
	return &servicecache.Snapshot{
		Node:     servicecache.Node{Name: "node-a", Addresses: ips("192.168.10.5", "fd00:10::5")},
		Services: []*servicecache.Service{s},
	}
}

func TestPlanGolden(t *testing.T) {
	v4 := Config{Families: []Family{IPv4}, ClusterCIDRs: pfxs("10.244.0.0/16"), LocalAddresses: ips("192.168.10.5"), NodePortIPs: ips("192.168.10.5")}
	dual := fullConfig()

	tests := []struct {
		name string
		snap *servicecache.Snapshot
		cfg  Config
	}{
		{"empty", &servicecache.Snapshot{}, v4},
		{"full", fullSnapshot(), dual},
		{
			// Every cluster IP is masqueraded, with a custom mark.
			"masquerade-all",
			singleService(&servicecache.Service{Key: svcKey("a"), ClusterIPs: ips("10.96.0.1"),
				Ports: []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 443}}}),
			Config{Families: []Family{IPv4}, MasqueradeAll: true, MasqueradeMark: 1 << 15, ClusterCIDRs: pfxs("10.244.0.0/16")},
		},
		{
			// --detect-local-mode=BridgeInterface: off-bridge traffic to a
			// cluster IP is masqueraded, whatever the pod CIDR.
			"detect-local-bridge",
			singleService(&servicecache.Service{Key: svcKey("a"), ClusterIPs: ips("10.96.0.1"),
				Ports: []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 443}}}),
			Config{Families: []Family{IPv4}, ClusterCIDRs: pfxs("10.244.0.0/16"), NotLocal: map[Family][]string{IPv4: {"!", "-i", "cbr0"}}},
		},
		{
			// Without a pod CIDR, upstream masquerades VIP-sourced traffic.
			"no-cluster-cidr",
			singleService(&servicecache.Service{Key: svcKey("a"), ClusterIPs: ips("10.96.0.1", "fd00:96::1"),
				Ports: []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolUDP, Port: 53}}}),
			Config{Families: []Family{IPv4, IPv6}},
		},
		{
			// Source ranges that exclude the node deny it through
			// KUBE-IPVS-OUT-FILTER; a zero-length range means no filter.
			"lb-source-ranges",
			&servicecache.Snapshot{
				Node: servicecache.Node{Name: "node-a", Addresses: ips("192.168.10.5", "fd00:10::5")},
				Services: []*servicecache.Service{
					{Key: svcKey("closed"), ClusterIPs: ips("10.96.0.1", "fd00:96::1"),
						LoadBalancerIPs:          ips("192.0.2.1", "2001:db8::1"),
						LoadBalancerSourceRanges: pfxs("198.51.100.0/24", "2001:db8:5::/48"),
						Ports: []servicecache.ServicePort{
							{Name: "p", Protocol: v1.ProtocolTCP, Port: 80},
							{Name: "q", Protocol: v1.ProtocolSCTP, Port: 90}}},
					{Key: svcKey("open"), ClusterIPs: ips("10.96.0.2"),
						LoadBalancerIPs:          ips("192.0.2.2"),
						LoadBalancerSourceRanges: pfxs("0.0.0.0/0", "198.51.100.0/24"),
						Ports:                    []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80}}},
					{Key: svcKey("unmasked"), ClusterIPs: ips("10.96.0.3"),
						LoadBalancerIPs:          ips("192.0.2.3"),
						LoadBalancerSourceRanges: pfxs("10.1.2.3/8"),
						Ports:                    []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80}}},
				},
			},
			// NodeIPs wins over the node's addresses: 10.1.0.9 is in the
			// "unmasked" service's range.
			Config{Families: []Family{IPv4, IPv6}, ClusterCIDRs: pfxs("10.244.0.0/16", "fd00:244::/56"), NodeIPs: ips("10.1.0.9")},
		},
		{
			// --nodeport-addresses=192.168.10.0/24,127.0.0.0/8,::/0 as the
			// proxier resolves it: loopback and link-local left out.
			"nodeport-addresses",
			singleService(&servicecache.Service{Key: svcKey("a"), ClusterIPs: ips("10.96.0.1", "fd00:96::1"),
				Ports: []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolSCTP, Port: 3868, NodePort: 30868}}}),
			Config{Families: []Family{IPv4, IPv6}, ClusterCIDRs: pfxs("10.244.0.0/16"),
				NodePortIPs:    ips("192.168.10.5", "192.168.10.6", "fd00:10::5"),
				LocalAddresses: ips("127.0.0.1", "192.168.10.5", "192.168.10.6", "10.0.0.1", "::1", "fd00:10::5", "fe80::1")},
		},
		{
			// No usable node address: upstream skips NodePorts.
			"no-node-addresses",
			singleService(&servicecache.Service{Key: svcKey("a"), ClusterIPs: ips("10.96.0.1"), ExternalPolicyLocal: true,
				HealthCheckNodePort: 32000,
				Ports:               []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080}}}),
			Config{Families: []Family{IPv4}, LocalAddresses: ips("127.0.0.1")},
		},
		{
			"bad-input",
			&servicecache.Snapshot{
				Node: servicecache.Node{Name: "node-a"},
				Services: []*servicecache.Service{
					nil,
					{Key: svcKey("icmp"), ClusterIPs: ips("10.96.0.1"),
						Ports: []servicecache.ServicePort{{Name: "ping", Protocol: "ICMP", Port: 1}}},
					{Key: svcKey("mapped"), ClusterIPs: ips("::ffff:10.96.0.2"),
						Ports: []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80}}},
					{Key: svcKey("zero"), ClusterIPs: ips("10.96.0.3"), ExternalIPs: ips("::ffff:1.2.3.4"),
						Ports: []servicecache.ServicePort{
							{Name: "none", Protocol: v1.ProtocolTCP, Port: 0},
							{Name: "ok", Protocol: v1.ProtocolTCP, Port: 80, Endpoints: []servicecache.Endpoint{
								ep("10.244.1.1", 0, "node-a"), ep("::ffff:10.244.1.2", 80, "node-a"), ep("10.244.1.3", 80, "node-a")}},
						}},
				},
			},
			Config{Families: []Family{IPv4, 5, IPv4}, ClusterCIDRs: pfxs("10.244.0.0/16", "10.245.0.0/16")},
		},
		{"no-family", fullSnapshot(), Config{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Plan(tc.snap, tc.cfg).Dump()
			checkGolden(t, "plan/"+tc.name+".golden", got)
			if again := Plan(tc.snap, tc.cfg).Dump(); again != got {
				t.Errorf("Plan is not deterministic:\n%s", lineDiff(got, again))
			}
		})
	}
}

func TestPlanDoesNotModifyInput(t *testing.T) {
	snap, cfg := fullSnapshot(), fullConfig()
	Plan(snap, cfg)
	if !reflect.DeepEqual(snap, fullSnapshot()) || !reflect.DeepEqual(cfg, fullConfig()) {
		t.Fatal("Plan modified its input")
	}
}

func TestPlanNilSnapshot(t *testing.T) {
	d := Plan(nil, Config{Families: []Family{IPv4}})
	if len(d.Families) != 1 || len(d.Families[0].Sets) != len(setSkeleton) {
		t.Fatalf("want the bare skeleton, got %+v", d)
	}
}

func TestPlanEntries(t *testing.T) {
	d := Plan(fullSnapshot(), fullConfig())
	if len(d.Families) != 2 || d.Families[0].Family != IPv4 || d.Families[1].Family != IPv6 {
		t.Fatalf("families = %v", d.Families)
	}
	v4, v6 := d.Families[0], d.Families[1]
	has := func(p *FamilyPlan, set string, e Entry) bool {
		return slices.Contains(p.Set(set).Entries, e)
	}
	checks := []struct {
		p    *FamilyPlan
		set  string
		e    Entry
		want bool
	}{
		{v4, setClusterIP, Entry{IP: ip("10.96.0.10"), Proto: ProtoUDP, Port: 53}, true},
		{v6, setClusterIP, Entry{IP: ip("fd00:96::a"), Proto: ProtoUDP, Port: 53}, true},
		{v4, setLoopBack, Entry{IP: ip("10.244.1.3"), Proto: ProtoUDP, Port: 53, IP2: ip("10.244.1.3")}, true},
		// Endpoints on other nodes do not hairpin here.
		{v4, setLoopBack, Entry{IP: ip("10.244.2.3"), Proto: ProtoUDP, Port: 53, IP2: ip("10.244.2.3")}, false},
		{v4, setNodePortTCP, Entry{Port: 30080}, true},
		{v4, setNodePortLocalTCP, Entry{Port: 30080}, true},
		{v4, setNodePortLocalTCP, Entry{Port: 30443}, false},
		{v4, setNodePortSCTP, Entry{IP: ip("192.168.10.5"), Proto: ProtoSCTP, Port: 30899}, true},
		// A local external IP is not bound to kube-ipvs0.
		{v4, setIPVSIPs, Entry{IP: ip("203.0.113.7")}, false},
		{v4, setIPVSIPs, Entry{IP: ip("198.51.100.9")}, true},
		{v4, setExternalIPLocal, Entry{IP: ip("203.0.113.7"), Proto: ProtoTCP, Port: 80}, true},
		{v4, setLoadBalancerSrcCIDR, Entry{IP: ip("192.0.2.50"), Proto: ProtoTCP, Port: 80, Net: pfx("198.18.0.0/15")}, true},
		{v4, setLoadBalancerSourceIP, Entry{IP: ip("192.0.2.50"), Proto: ProtoTCP, Port: 80, IP2: ip("192.0.2.50")}, true},
		{v6, setHealthCheckNodePort, Entry{Port: 32000}, true},
	}
	for _, c := range checks {
		if got := has(c.p, c.set, c.e); got != c.want {
			t.Errorf("%v %s has %s = %v, want %v", c.p.Family, setName(c.set, c.p.Family), c.e, got, c.want)
		}
	}
	// Every planned entry fits its set.
	for _, p := range d.Families {
		for _, s := range p.Sets {
			for _, e := range s.Entries {
				if err := s.Spec.Validate(e); err != nil {
					t.Error(err)
				}
			}
		}
	}
	if c := v4.Chain(TableNAT, chainServices); c == nil || !strings.Contains(c.Rules[0].String(), "127.0.0.0/8") {
		t.Errorf("KUBE-SERVICES does not start with the loopback RETURN: %v", c)
	}
}

func TestSetNames(t *testing.T) {
	for _, tc := range []struct{ base, v6 string }{
		{setClusterIP, "KUBE-6-CLUSTER-IP"},
		{setLoadBalancerSrcCIDR, "KUBE-6-LOAD-BALANCER-SOURCE-CID"},
		{setNodePortLocalSCTP, "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS"},
	} {
		if got := setName(tc.base, IPv6); got != tc.v6 {
			t.Errorf("setName(%s, IPv6) = %s, want %s", tc.base, got, tc.v6)
		}
		if got := setName(tc.base, IPv4); got != tc.base {
			t.Errorf("setName(%s, IPv4) = %s", tc.base, got)
		}
	}
	for _, f := range []Family{IPv4, IPv6} {
		for _, s := range SetSpecs(f) {
			if len(s.Name) > maxSetNameLen || !OwnsSet(s.Name) {
				t.Errorf("bad set name %q", s.Name)
			}
		}
	}
	if OwnsSet("KUBE-FOO") || OwnsChain(TableFilter, "KUBE-FIREWALL") || OwnsChain(TableNAT, "KUBE-FORWARD") {
		t.Error("claims a set or chain that is not ours")
	}
}
