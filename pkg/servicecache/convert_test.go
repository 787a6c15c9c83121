package servicecache

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestConvertServiceSkips(t *testing.T) {
	tests := []struct {
		name     string
		svc      *v1.Service
		skip     string // substring of the reason
		wantNote string // substring of a note, if any
	}{
		{name: "nil", svc: nil, skip: SkipNil},
		{name: "external name", skip: SkipExternalName, svc: svcObj("ns", "a", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeExternalName
			s.Spec.ExternalName = "example.com"
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil
		})},
		{name: "external name with a cluster IP", skip: SkipExternalName, svc: svcObj("ns", "a", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeExternalName
		})},
		{name: "headless", skip: SkipHeadless, svc: svcObj("ns", "a", withClusterIPs("None"))},
		{name: "headless in clusterIP only", skip: SkipHeadless, svc: svcObj("ns", "a", func(s *v1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", nil
		})},
		{name: "other proxy", skip: SkipProxyName, svc: svcObj("ns", "a", func(s *v1.Service) {
			s.Labels = map[string]string{LabelServiceProxyName: "other"}
		})},
		{name: "other proxy, empty value", skip: SkipProxyName, svc: svcObj("ns", "a", func(s *v1.Service) {
			s.Labels = map[string]string{LabelServiceProxyName: ""}
		})},
		{name: "no cluster IP", skip: SkipNoClusterIP, svc: svcObj("ns", "a", withClusterIPs())},
		{name: "only cluster IP invalid", skip: `no valid cluster IP in ["10.0.0.300"]`, wantNote: `invalid IP "10.0.0.300"`,
			svc: svcObj("ns", "a", withClusterIPs("10.0.0.300"))},
		{name: "fallback clusterIP invalid", skip: "no valid cluster IP", wantNote: `invalid IP "bogus"`,
			svc: svcObj("ns", "a", func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "bogus", nil })},
		{name: "zoned IPv6 cluster IP", skip: "no valid cluster IP", wantNote: "zone not allowed",
			svc: svcObj("ns", "a", withClusterIPs("fe80::1%eth0"))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, skip, notes := ConvertService(tc.svc)
			if got != nil {
				t.Fatalf("got service %s, want skipped", got.Dump())
			}
			if skip == "" || !strings.Contains(skip, tc.skip) {
				t.Errorf("skip reason %q, want it to contain %q", skip, tc.skip)
			}
			if tc.wantNote != "" && !hasNote(notes, tc.wantNote) {
				t.Errorf("notes %q, want one containing %q", notes, tc.wantNote)
			}
		})
	}
}

func TestConvertService(t *testing.T) {
	tests := []struct {
		name  string
		svc   *v1.Service
		want  string   // Dump() of the result
		notes []string // substrings expected among the notes
	}{
		{
			name: "minimal",
			svc:  svcObj("ns", "a"),
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "http"/TCP 80`,
		},
		{
			name: "ports: port 0 ignored, default protocol, sorted, no nodePort on ClusterIP",
			svc: svcObj("ns", "a", withPorts(
				v1.ServicePort{Name: "z", Port: 9},
				v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, NodePort: 30053},
				v1.ServicePort{Name: "dns", Protocol: v1.ProtocolTCP, Port: 53},
				v1.ServicePort{Name: "zero", Port: 0},
				v1.ServicePort{Name: "big", Port: 70000},
				v1.ServicePort{Name: "z", Protocol: v1.ProtocolTCP, Port: 10},
			)),
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "dns"/TCP 53
				  port "dns"/UDP 53
				  port "z"/TCP 9`,
			notes: []string{
				`port "zero"/TCP ignored: port number 0`,
				`port "big"/TCP ignored: port number 70000`,
				`port "z"/TCP ignored: duplicate`,
			},
		},
		{
			name: "NodePort keeps node ports",
			svc: svcObj("ns", "a", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
			}),
			want: `
				service ns/a NodePort ips=10.0.0.1
				  port "http"/TCP 80 nodePort=30080`,
		},
		{
			name: "dual-stack, one invalid, one duplicate family, legacy leading zeros",
			svc:  svcObj("ns", "a", withClusterIPs("fd00::0a", "bad", "010.000.000.001", "10.0.0.2")),
			want: `
				service ns/a ClusterIP ips=fd00::a,10.0.0.1
				  port "http"/TCP 80`,
			notes: []string{`invalid IP "bad"`, "clusterIP 10.0.0.2 dropped: second IPv4"},
		},
		{
			name: "load balancer: ipMode, families, source ranges, local policy",
			svc: svcObj("ns", "lb", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 31000
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 32000
				s.Spec.LoadBalancerSourceRanges = []string{" 192.168.1.7/24 ", "10.0.0.0/8", "2001:db8::/32", "nope", "10.0.0.0/8"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
					{IP: "5.6.7.9"},
					{IP: "5.6.7.8", IPMode: ptrTo(v1.LoadBalancerIPModeVIP)},
					{IP: "5.6.7.10", IPMode: ptrTo(v1.LoadBalancerIPModeProxy)},
					{Hostname: "lb.example.com"},
					{IP: "2001:db8::1"},
					{IP: "not-an-ip"},
				}
			}),
			want: `
				service ns/lb LoadBalancer ips=10.0.0.1 lbIPs=5.6.7.8,5.6.7.9 sourceRanges=10.0.0.0/8,192.168.1.0/24,2001:db8::/32 etp=Local hcNodePort=32000
				  port "http"/TCP 80 nodePort=31000`,
			notes: []string{
				"load balancer IP 5.6.7.10 not bound: ipMode Proxy",
				"load balancer IP 2001:db8::1 dropped: no IPv6 cluster IP",
				`invalid IP "not-an-ip"`,
				`invalid CIDR "nope"`,
			},
		},
		{
			name: "local LoadBalancer without health check port",
			svc: svcObj("ns", "lb", func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: `
				service ns/lb LoadBalancer ips=10.0.0.1 etp=Local
				  port "http"/TCP 80`,
			notes: []string{"no valid healthCheckNodePort"},
		},
		{
			name: "external IPs, affinity default, internal policy, distribution, annotations",
			svc: svcObj("ns", "a", func(s *v1.Service) {
				s.Spec.ExternalIPs = []string{"1.2.3.5", "1.2.3.4", "x", "2001:db8::5", "1.2.3.4"}
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.InternalTrafficPolicy = ptrTo(v1.ServiceInternalTrafficPolicyLocal)
				s.Spec.TrafficDistribution = ptrTo("PreferClose")
				s.Annotations = map[string]string{
					AnnotationPrefix + "scheduler": "wrr",
					"example.com/other":            "x",
				}
			}),
			want: `
				service ns/a ClusterIP ips=10.0.0.1 externalIPs=1.2.3.4,1.2.3.5 affinity=10800 etp=Local itp=Local trafficDistribution=PreferClose ipvs.kube-ipvs-proxy.io/scheduler="wrr"
				  port "http"/TCP 80`,
			notes: []string{`invalid IP "x"`, "externalIP 2001:db8::5 dropped: no IPv6 cluster IP"},
		},
		{
			name: "explicit affinity timeout; Local policy kept as written",
			svc: svcObj("ns", "a", func(s *v1.Service) {
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptrTo(int32(60))}}
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Annotations = map[string]string{"example.com/other": "x"}
			}),
			want: `
				service ns/a ClusterIP ips=10.0.0.1 affinity=60 etp=Local
				  port "http"/TCP 80`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, skip, notes := ConvertService(tc.svc)
			if got == nil {
				t.Fatalf("skipped: %s (notes %q)", skip, notes)
			}
			checkText(t, got.Dump(), tc.want)
			for _, n := range tc.notes {
				if !hasNote(notes, n) {
					t.Errorf("notes %q, want one containing %q", notes, n)
				}
			}
			if len(tc.notes) == 0 && len(notes) > 0 {
				t.Errorf("unexpected notes %q", notes)
			}
			if got.Annotations != nil && len(got.Annotations) == 0 {
				t.Errorf("Annotations must be nil when none are copied")
			}
		})
	}
}

func TestConvertServiceDoesNotModifyInput(t *testing.T) {
	in := svcObj("ns", "a", withPorts(
		v1.ServicePort{Name: "b", Port: 2},
		v1.ServicePort{Name: "a", Port: 1},
	), func(s *v1.Service) { s.Spec.ExternalIPs = []string{"1.1.1.2", "1.1.1.1"} })
	before := in.DeepCopy()
	if _, skip, _ := ConvertService(in); skip != "" {
		t.Fatal(skip)
	}
	if in.Spec.Ports[0].Name != before.Spec.Ports[0].Name || in.Spec.ExternalIPs[0] != before.Spec.ExternalIPs[0] {
		t.Errorf("input modified")
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1":          "10.0.0.1",
		"010.001.000.009":   "10.1.0.9",
		"::ffff:10.0.0.1":   "10.0.0.1",
		"2001:DB8::1":       "2001:db8::1",
		"256.0.0.1":         "",
		"1.2.3":             "",
		"":                  "",
		"1.2.3.4 ":          "",
		"fe80::1%eth0":      "",
		"-1.2.3.4":          "",
		"1.2.3.0x4":         "",
		"00000000001.0.0.1": "1.0.0.1",
	} {
		a, err := parseAddr(in)
		if (err != nil) != (want == "") || (err == nil && a.String() != want) {
			t.Errorf("parseAddr(%q) = %v, %v; want %q", in, a, err, want)
		}
	}
	for in, want := range map[string]string{
		" 10.1.2.3/8 ":        "10.0.0.0/8",
		"010.1.2.3/16":        "10.1.0.0/16",
		"0.0.0.0/0":           "0.0.0.0/0",
		"2001:db8::1/64":      "2001:db8::/64",
		"::ffff:10.1.2.3/120": "10.1.2.0/24",
		"::ffff:10.1.2.3/64":  "",
		"10.0.0.0/33":         "",
		"10.0.0.0":            "",
		"10.0.0.0/x":          "",
		"10.0.0.0/-1":         "",
	} {
		p, err := parsePrefix(in)
		if (err != nil) != (want == "") || (err == nil && p != netip.MustParsePrefix(want)) {
			t.Errorf("parsePrefix(%q) = %v, %v; want %q", in, p, err, want)
		}
	}
}

func TestConvertNode(t *testing.T) {
	n, notes := ConvertNode(&v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{v1.LabelTopologyZone: "z1"}},
		Spec:       v1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24", "fd00:244:1::/64", "junk"}},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "192.168.0.10"},
			{Type: v1.NodeHostName, Address: "n1"},
			{Type: v1.NodeExternalIP, Address: "1.2.3.4"},
			{Type: v1.NodeInternalIP, Address: "fd00::10"},
			{Type: v1.NodeInternalIP, Address: "oops"},
			{Type: v1.NodeInternalDNS, Address: "n1.local"},
		}},
	})
	checkText(t, n.String(), "node n1 zone=z1 addrs=192.168.0.10,fd00::10,1.2.3.4 podCIDRs=10.244.1.0/24,fd00:244:1::/64")
	if !hasNote(notes, `invalid IP "oops"`) || !hasNote(notes, `invalid CIDR "junk"`) {
		t.Errorf("notes %q", notes)
	}
	n, _ = ConvertNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}, Spec: v1.NodeSpec{PodCIDR: "10.244.2.0/24"}})
	checkText(t, n.String(), "node n2 podCIDRs=10.244.2.0/24")
}
