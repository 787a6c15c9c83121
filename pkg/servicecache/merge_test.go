package servicecache

import (
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

func TestMergeEndpointSlices(t *testing.T) {
	http := []discovery.EndpointPort{eport("http", 8080)}
	tests := []struct {
		name   string
		svc    *v1.Service
		slices []*discovery.EndpointSlice
		want   string
		notes  []string
	}{
		{
			name: "no slices",
			svc:  svcObj("ns", "a"),
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "http"/TCP 80`,
		},
		{
			name: "conditions, topology, hints, first address only, sorted",
			svc:  svcObj("ns", "a"),
			slices: []*discovery.EndpointSlice{sliceObj("ns", "a-1", "a", http,
				epObj("10.1.0.3", conds(no, yes, yes), onNode("n2", "z2")),
				epObj("10.1.0.2", conds(no, nil, nil)),
				epObj("10.1.0.1", onNode("n1", "z1"), func(e *discovery.Endpoint) {
					e.Addresses = append(e.Addresses, "10.9.9.9")
					e.Hints = &discovery.EndpointHints{
						ForZones: []discovery.ForZone{{Name: "z2"}, {Name: "z1"}, {Name: "z2"}},
						ForNodes: []discovery.ForNode{{Name: "n1"}},
					}
				}),
				epObj("10.1.0.4", conds(no, no, yes)),
				epObj("10.1.0.5", conds(yes, no, nil)),
				// serving omitted reads as true, as upstream reads it.
				epObj("10.1.0.6", conds(no, nil, yes)),
			)},
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "http"/TCP 80
				    10.1.0.1:8080 ready,serving node=n1 zone=z1 zoneHints=z1,z2 nodeHints=n1
				    10.1.0.2:8080 serving
				    10.1.0.3:8080 serving,terminating node=n2 zone=z2
				    10.1.0.4:8080 terminating
				    10.1.0.5:8080 ready
				    10.1.0.6:8080 serving,terminating`,
		},
		{
			name: "IPv6 endpoint in IPv4 service, invalid and empty addresses",
			svc:  svcObj("ns", "a"),
			slices: []*discovery.EndpointSlice{
				sliceObj("ns", "a-v6", "a", http, epObj("fd00::1")),
				sliceObj("ns", "a-v4", "a", http, epObj("10.1.0.1"), epObj("10.1.0.999"),
					discovery.Endpoint{}),
			},
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "http"/TCP 80
				    10.1.0.1:8080 ready,serving`,
			notes: []string{
				"endpoint fd00::1 ignored: the Service has no IPv6 cluster IP",
				`invalid IP "10.1.0.999"`,
				"endpoint 2 ignored: no address",
			},
		},
		{
			name: "dual-stack",
			svc:  svcObj("ns", "a", withClusterIPs("fd00::1", "10.0.0.1")),
			slices: []*discovery.EndpointSlice{
				sliceObj("ns", "a-v6", "a", http, epObj("fd00:1::2"), epObj("fd00:1::1")),
				sliceObj("ns", "a-v4", "a", http, epObj("10.1.0.1")),
			},
			want: `
				service ns/a ClusterIP ips=fd00::1,10.0.0.1
				  port "http"/TCP 80
				    10.1.0.1:8080 ready,serving
				    [fd00:1::1]:8080 ready,serving
				    [fd00:1::2]:8080 ready,serving`,
		},
		{
			name: "slice ports: port 0, nil port, nil name, unknown name, protocol mismatch, default protocol",
			svc: svcObj("ns", "a", withPorts(
				v1.ServicePort{Name: "http", Port: 80},
				v1.ServicePort{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53},
				v1.ServicePort{Name: "other", Port: 81},
			)),
			slices: []*discovery.EndpointSlice{sliceObj("ns", "a-1", "a", []discovery.EndpointPort{
				eport("http", 0),
				{Name: ptrTo("http")},
				{Port: ptrTo(int32(8080))},
				eport("nope", 1),
				eport("dns", 5353), // TCP, the Service port is UDP
				{Name: ptrTo("dns"), Port: ptrTo(int32(53)), Protocol: ptrTo(v1.ProtocolUDP)},
				{Name: ptrTo("http"), Port: ptrTo(int32(8080))},
			}, epObj("10.1.0.1"))},
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "dns"/UDP 53
				    10.1.0.1:53 ready,serving
				  port "http"/TCP 80
				    10.1.0.1:8080 ready,serving
				  port "other"/TCP 81`,
			notes: []string{
				`port "http" ignored: no valid port number`,
				"port with nil name ignored",
				`port "nope"/TCP ignored: the Service has no such port`,
				`port "dns"/TCP ignored`,
			},
		},
		{
			name: "duplicates across slices: ready wins, whatever the slice order",
			svc:  svcObj("ns", "a"),
			slices: []*discovery.EndpointSlice{
				sliceObj("ns", "a-1", "a", http, epObj("10.1.0.1", conds(no, yes, yes)), epObj("10.1.0.2", onNode("new", ""))),
				sliceObj("ns", "a-2", "a", http, epObj("10.1.0.1", conds(yes, yes, no)), epObj("10.1.0.2", conds(no, no, yes), onNode("old", ""))),
				sliceObj("ns", "a-3", "a", http, epObj("10.1.0.1", conds(no, no, yes))),
			},
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "http"/TCP 80
				    10.1.0.1:8080 ready,serving
				    10.1.0.2:8080 ready,serving node=new`,
		},
		{
			name: "duplicates: serving beats not serving",
			svc:  svcObj("ns", "a"),
			slices: []*discovery.EndpointSlice{
				sliceObj("ns", "a-1", "a", http, epObj("10.1.0.1", conds(no, no, yes))),
				sliceObj("ns", "a-2", "a", http, epObj("10.1.0.1", conds(no, yes, yes))),
			},
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "http"/TCP 80
				    10.1.0.1:8080 serving,terminating`,
		},
		{
			name: "same address, different target ports stay distinct",
			svc:  svcObj("ns", "a"),
			slices: []*discovery.EndpointSlice{
				sliceObj("ns", "a-1", "a", []discovery.EndpointPort{eport("http", 8080)}, epObj("10.1.0.1")),
				sliceObj("ns", "a-2", "a", []discovery.EndpointPort{eport("http", 8081)}, epObj("10.1.0.1")),
			},
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "http"/TCP 80
				    10.1.0.1:8080 ready,serving
				    10.1.0.1:8081 ready,serving`,
		},
		{
			name: "foreign and FQDN slices ignored",
			svc:  svcObj("ns", "a"),
			slices: []*discovery.EndpointSlice{
				sliceObj("other", "a-1", "a", http, epObj("10.1.0.1")),
				sliceObj("ns", "b-1", "b", http, epObj("10.1.0.2")),
				func() *discovery.EndpointSlice {
					s := sliceObj("ns", "a-fqdn", "a", http, epObj("example.com"))
					s.AddressType = discovery.AddressTypeFQDN
					return s
				}(),
				nil,
			},
			want: `
				service ns/a ClusterIP ips=10.0.0.1
				  port "http"/TCP 80`,
			notes: []string{"other/a-1 ignored: does not belong", "ns/b-1 ignored", "a-fqdn ignored: addressType FQDN"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base, skip, _ := ConvertService(tc.svc)
			if base == nil {
				t.Fatal(skip)
			}
			got, notes := MergeEndpointSlices(base, tc.slices)
			checkText(t, got.Dump(), tc.want)
			for _, n := range tc.notes {
				if !hasNote(notes, n) {
					t.Errorf("notes %q, want one containing %q", notes, n)
				}
			}
			if len(tc.notes) == 0 && len(notes) > 0 {
				t.Errorf("unexpected notes %q", notes)
			}
			// The input is left untouched and the result does not depend
			// on the order of the slices.
			for _, p := range base.Ports {
				if p.Endpoints != nil {
					t.Errorf("input Service modified")
				}
			}
			rev := slices.Clone(tc.slices)
			slices.Reverse(rev)
			again, _ := MergeEndpointSlices(base, rev)
			if !again.Equal(got) {
				t.Errorf("order-dependent result:\n%s", again.Dump())
			}
		})
	}
}

func TestBuildService(t *testing.T) {
	http := []discovery.EndpointPort{eport("http", 8080)}
	if s, skip, _ := BuildService(svcObj("ns", "a", withClusterIPs("None")), nil); s != nil || skip != SkipHeadless {
		t.Errorf("headless: got %v, %q", s, skip)
	}
	s, skip, _ := BuildService(svcObj("ns", "a"), []*discovery.EndpointSlice{sliceObj("ns", "a-1", "a", http, epObj("10.1.0.1"))})
	if s == nil {
		t.Fatal(skip)
	}
	checkText(t, s.Dump(), `
		service ns/a ClusterIP ips=10.0.0.1
		  port "http"/TCP 80
		    10.1.0.1:8080 ready,serving`)
}

func TestServiceEqual(t *testing.T) {
	http := []discovery.EndpointPort{eport("http", 8080)}
	build := func(mods ...func(*v1.Service)) *Service {
		s, _, _ := BuildService(svcObj("ns", "a", mods...), []*discovery.EndpointSlice{
			sliceObj("ns", "a-1", "a", http, epObj("10.1.0.1", func(e *discovery.Endpoint) {
				e.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "z"}}}
			})),
		})
		return s
	}
	a := build()
	if !a.Equal(build()) {
		t.Errorf("identical builds differ")
	}
	if !a.Equal(build(func(s *v1.Service) {
		s.ResourceVersion = "42"
		s.Annotations = map[string]string{"unrelated": "x"}
	})) {
		t.Errorf("irrelevant metadata makes services differ")
	}
	for name, mod := range map[string]func(*v1.Service){
		"affinity":   func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP },
		"annotation": func(s *v1.Service) { s.Annotations = map[string]string{AnnotationPrefix + "x": "y"} },
		"port":       func(s *v1.Service) { s.Spec.Ports[0].Port = 81 },
		"externalIP": func(s *v1.Service) { s.Spec.ExternalIPs = []string{"1.1.1.1"} },
		"range":      func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{"1.0.0.0/8"} },
	} {
		if a.Equal(build(mod)) {
			t.Errorf("%s change not detected", name)
		}
	}
	b := build()
	b.Ports[0].Endpoints[0].ZoneHints = []string{"y"}
	if a.Equal(b) {
		t.Errorf("hint change not detected")
	}
	var nilSvc *Service
	if !nilSvc.Equal(nil) || nilSvc.Equal(a) || a.Equal(nil) {
		t.Errorf("nil handling")
	}
}
