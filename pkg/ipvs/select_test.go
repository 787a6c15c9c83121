package ipvs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// cep builds an endpoint for the categorization tests. flags: R ready,
// S serving, T terminating, L on this node ("node-1"); zones and nodes are
// comma-separated hints ("" for none).
func cep(addrPort, flags, zones, nodes string) servicecache.Endpoint {
	ap := netip.MustParseAddrPort(addrPort)
	e := servicecache.Endpoint{
		Addr:        ap.Addr(),
		Port:        ap.Port(),
		Ready:       strings.Contains(flags, "R"),
		Serving:     strings.Contains(flags, "R") || strings.Contains(flags, "S"),
		Terminating: strings.Contains(flags, "T"),
		NodeName:    "node-9",
	}
	if strings.Contains(flags, "L") {
		e.NodeName = "node-1"
	}
	if zones != "" {
		e.ZoneHints = strings.Split(zones, ",")
	}
	if nodes != "" {
		e.NodeHints = strings.Split(nodes, ",")
	}
	return e
}

// TestCategorizeLikeUpstream ports the cases of upstream's
// TestCategorizeEndpoints (k8s.io/kubernetes pkg/proxy/topology_test.go,
// v1.37.2): cluster and local are upstream's expected categories (nil when
// the Service does not use it), from which the real servers of the cluster
// IP and node port virtual servers follow.
func TestCategorizeLikeUpstream(t *testing.T) {
	type policy struct{ iTPLocal, eTPLocal, nodePort bool }
	tests := []struct {
		name           string
		node, zone     string
		pol            policy
		eps            []servicecache.Endpoint
		cluster, local []string
	}{{
		name: "topology: all endpoints hinted, some for the node's zone",
		zone: "zone-a",
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "R", "zone-a", ""), cep("10.1.2.4:80", "R", "zone-b", ""),
			cep("10.1.2.5:80", "R", "zone-c", ""), cep("10.1.2.6:80", "R", "zone-a", ""),
		},
		cluster: []string{"10.1.2.3:80", "10.1.2.6:80"},
	}, {
		name: "eTP Local: topology ignored for local endpoints",
		zone: "zone-a", pol: policy{eTPLocal: true, nodePort: true},
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "RL", "zone-a", ""), cep("10.1.2.4:80", "RL", "zone-b", ""),
			cep("10.1.2.5:80", "R", "zone-c", ""), cep("10.1.2.6:80", "R", "zone-a", ""),
		},
		cluster: []string{"10.1.2.3:80", "10.1.2.6:80"},
		local:   []string{"10.1.2.3:80", "10.1.2.4:80"},
	}, {
		name: "iTP Local: topology ignored for local endpoints",
		zone: "zone-a", pol: policy{iTPLocal: true, nodePort: true},
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "RL", "zone-a", ""), cep("10.1.2.4:80", "RL", "zone-b", ""),
			cep("10.1.2.5:80", "R", "zone-c", ""), cep("10.1.2.6:80", "R", "zone-a", ""),
		},
		cluster: []string{"10.1.2.3:80", "10.1.2.6:80"},
		local:   []string{"10.1.2.3:80", "10.1.2.4:80"},
	}, {
		name:    "node without a zone",
		eps:     []servicecache.Endpoint{cep("10.1.2.3:80", "R", "zone-a", "")},
		cluster: []string{"10.1.2.3:80"},
	}, {
		name:    "node in a zone with no hinted endpoint",
		zone:    "zone-b",
		eps:     []servicecache.Endpoint{cep("10.1.2.3:80", "R", "zone-a", "")},
		cluster: []string{"10.1.2.3:80"},
	}, {
		name: "unready endpoint in the zone",
		zone: "zone-a",
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "R", "zone-a", ""), cep("10.1.2.4:80", "R", "zone-b", ""),
			cep("10.1.2.5:80", "R", "zone-c", ""), cep("10.1.2.6:80", "", "zone-a", ""),
		},
		cluster: []string{"10.1.2.3:80"},
	}, {
		name: "only unready endpoints in the zone: no filtering",
		zone: "zone-a",
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "", "zone-a", ""), cep("10.1.2.4:80", "R", "zone-b", ""),
			cep("10.1.2.5:80", "R", "zone-c", ""), cep("10.1.2.6:80", "", "zone-a", ""),
		},
		cluster: []string{"10.1.2.4:80", "10.1.2.5:80"},
	}, {
		name: "a ready endpoint misses its hint: no filtering",
		zone: "zone-a",
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "R", "zone-a", ""), cep("10.1.2.4:80", "R", "zone-b", ""),
			cep("10.1.2.5:80", "R", "", ""), cep("10.1.2.6:80", "R", "zone-a", ""),
		},
		cluster: []string{"10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"},
	}, {
		name: "several zone hints per endpoint",
		zone: "zone-c",
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "R", "zone-a,zone-b,zone-c", ""), cep("10.1.2.4:80", "R", "zone-b,zone-c", ""),
			cep("10.1.2.5:80", "R", "zone-b,zone-d", ""), cep("10.1.2.6:80", "R", "zone-c", ""),
		},
		cluster: []string{"10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"},
	}, {
		name: "PreferSameNode",
		node: "node-1", zone: "zone-a",
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "R", "zone-a", "node-1"), cep("10.1.2.4:80", "R", "zone-b", "node-2"),
			cep("10.1.2.5:80", "R", "zone-c", "node-3"), cep("10.1.2.6:80", "R", "zone-a", "node-4"),
		},
		cluster: []string{"10.1.2.3:80"},
	}, {
		name: "PreferSameNode ignored when an endpoint has no hint at all",
		node: "node-1", zone: "zone-a",
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "R", "zone-a", "node-1"), cep("10.1.2.4:80", "R", "", ""),
			cep("10.1.2.5:80", "R", "zone-c", "node-3"), cep("10.1.2.6:80", "R", "zone-a", "node-4"),
		},
		cluster: []string{"10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"},
	}, {
		name: "PreferSameNode falls back to the zone hints with no endpoint for the node",
		node: "node-0", zone: "zone-a",
		eps: []servicecache.Endpoint{
			cep("10.1.2.3:80", "R", "zone-a", "node-1"), cep("10.1.2.4:80", "R", "zone-b", "node-2"),
			cep("10.1.2.5:80", "R", "zone-c", "node-3"), cep("10.1.2.6:80", "R", "zone-a", "node-4"),
		},
		cluster: []string{"10.1.2.3:80", "10.1.2.6:80"},
	}, {
		name: "topology for cluster endpoints, not for local ones",
		zone: "zone-a", pol: policy{eTPLocal: true, nodePort: true},
		eps: []servicecache.Endpoint{
			cep("10.0.0.0:80", "RL", "zone-a", ""), cep("10.0.0.1:80", "RL", "zone-b", ""),
			cep("10.0.0.2:80", "R", "zone-a", ""), cep("10.0.0.3:80", "R", "zone-b", ""),
		},
		cluster: []string{"10.0.0.0:80", "10.0.0.2:80"},
		local:   []string{"10.0.0.0:80", "10.0.0.1:80"},
	}, {
		name:  "iTP Local, no endpoints",
		pol:   policy{iTPLocal: true},
		local: []string{},
	}, {
		name:  "iTP Local, all endpoints remote",
		pol:   policy{iTPLocal: true},
		eps:   []servicecache.Endpoint{cep("10.0.0.0:80", "R", "", ""), cep("10.0.0.1:80", "R", "", "")},
		local: []string{},
	}, {
		name:  "iTP Local, all endpoints local",
		pol:   policy{iTPLocal: true},
		eps:   []servicecache.Endpoint{cep("10.0.0.0:80", "RL", "", ""), cep("10.0.0.1:80", "RL", "", "")},
		local: []string{"10.0.0.0:80", "10.0.0.1:80"},
	}, {
		name:  "iTP Local, some endpoints local",
		pol:   policy{iTPLocal: true},
		eps:   []servicecache.Endpoint{cep("10.0.0.0:80", "RL", "", ""), cep("10.0.0.1:80", "R", "", "")},
		local: []string{"10.0.0.0:80"},
	}, {
		name:    "Cluster, no endpoint ready",
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "", "", ""), cep("10.0.0.1:80", "", "", "")},
		cluster: []string{},
	}, {
		name:    "Cluster, some endpoints ready",
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "", "", ""), cep("10.0.0.1:80", "R", "", "")},
		cluster: []string{"10.0.0.1:80"},
	}, {
		name:    "Cluster, all endpoints terminating",
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "STL", "", ""), cep("10.0.0.1:80", "ST", "", "")},
		cluster: []string{"10.0.0.0:80", "10.0.0.1:80"},
	}, {
		name:    "iTP Local, eTP Cluster, some endpoints local",
		pol:     policy{iTPLocal: true, nodePort: true},
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "RL", "", ""), cep("10.0.0.1:80", "R", "", "")},
		cluster: []string{"10.0.0.0:80", "10.0.0.1:80"},
		local:   []string{"10.0.0.0:80"},
	}, {
		name:    "iTP Cluster, eTP Local, some endpoints local",
		pol:     policy{eTPLocal: true, nodePort: true},
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "RL", "", ""), cep("10.0.0.1:80", "R", "", "")},
		cluster: []string{"10.0.0.0:80", "10.0.0.1:80"},
		local:   []string{"10.0.0.0:80"},
	}, {
		name:    "iTP Local, eTP Local, some endpoints local",
		pol:     policy{iTPLocal: true, eTPLocal: true, nodePort: true},
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "RL", "", ""), cep("10.0.0.1:80", "R", "", "")},
		cluster: []string{"10.0.0.0:80", "10.0.0.1:80"},
		local:   []string{"10.0.0.0:80"},
	}, {
		name:    "iTP Local, eTP Local, all endpoints remote",
		pol:     policy{iTPLocal: true, eTPLocal: true, nodePort: true},
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "R", "", ""), cep("10.0.0.1:80", "R", "", "")},
		cluster: []string{"10.0.0.0:80", "10.0.0.1:80"},
		local:   []string{},
	}, {
		name:    "iTP Local, eTP Local, all endpoints remote and terminating",
		pol:     policy{iTPLocal: true, eTPLocal: true, nodePort: true},
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "ST", "", ""), cep("10.0.0.1:80", "ST", "", "")},
		cluster: []string{"10.0.0.0:80", "10.0.0.1:80"},
		local:   []string{},
	}, {
		name: "iTP Cluster, eTP Local, terminating endpoints",
		pol:  policy{eTPLocal: true, nodePort: true},
		eps: []servicecache.Endpoint{
			cep("10.0.0.0:80", "R", "", ""), cep("10.0.0.1:80", "L", "", ""),
			cep("10.0.0.2:80", "STL", "", ""), cep("10.0.0.3:80", "ST", "", ""),
		},
		cluster: []string{"10.0.0.0:80"},
		local:   []string{"10.0.0.2:80"},
	}, {
		name:    "eTP Local ignored when not externally accessible",
		pol:     policy{eTPLocal: true},
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "R", "", ""), cep("10.0.0.1:80", "RL", "", "")},
		cluster: []string{"10.0.0.0:80", "10.0.0.1:80"},
	}, {
		name:  "iTP Local, internal only: no cluster endpoints",
		pol:   policy{iTPLocal: true},
		eps:   []servicecache.Endpoint{cep("10.0.0.0:80", "R", "", ""), cep("10.0.0.1:80", "RL", "", "")},
		local: []string{"10.0.0.1:80"},
	}, {
		name: "no endpoints",
	}, {
		name:    "one endpoint neither ready, serving nor terminating",
		zone:    "zone-a",
		eps:     []servicecache.Endpoint{cep("10.0.0.0:80", "", "", "")},
		cluster: []string{},
	}}
	for _, tt := range tests {
		for _, fallback := range []bool{false, true} {
			name := tt.name
			if fallback {
				name += "/fallback"
			}
			t.Run(name, func(t *testing.T) {
				node := &servicecache.Node{Name: "node-1", Zone: tt.zone}
				if tt.node != "" {
					node.Name = tt.node
				}
				s := &servicecache.Service{
					Key:                 key("default", "svc"),
					ClusterIPs:          ips("10.96.0.1"),
					InternalPolicyLocal: tt.pol.iTPLocal,
					ExternalPolicyLocal: tt.pol.eTPLocal,
					Ports:               []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, Endpoints: tt.eps}},
				}
				if tt.pol.nodePort {
					s.Ports[0].NodePort = 30080
				}
				cfg := Config{NodePortAddresses: ips("192.168.1.10"), LocalAddresses: ips("192.168.1.10"), LocalFallbackToCluster: fallback}
				vss := PlanService(s, node, cfg)

				wantInternal := tt.cluster
				if tt.pol.iTPLocal {
					wantInternal = tt.local
				}
				wantExternal := tt.cluster
				if tt.pol.eTPLocal {
					wantExternal = tt.local
					if fallback && len(tt.local) == 0 {
						wantExternal = tt.cluster
					}
				}
				// Traffic from inside the cluster to the external
				// addresses goes to every endpoint through a firewall-mark
				// virtual server, when the policy restricts them.
				fwmark := tt.pol.eTPLocal && !fallback && tt.pol.nodePort && len(tt.cluster) > 0 &&
					!slices.Equal(slices.Sorted(slices.Values(tt.local)), slices.Sorted(slices.Values(tt.cluster)))
				for _, vs := range vss {
					want := wantInternal
					switch vs.Kind {
					case KindClusterIP:
					case KindFWMark:
						want = tt.cluster
					default:
						want = wantExternal
					}
					var got []string
					for _, rs := range vs.RealServers {
						got = append(got, rs.Key.String())
					}
					want = slices.Sorted(slices.Values(want))
					if !slices.Equal(got, want) && len(got)+len(want) > 0 {
						t.Errorf("%s %s: real servers %v, want %v", vs.Kind, vs.Key, got, want)
					}
				}
				wantVS := 1
				if tt.pol.nodePort {
					wantVS = 2
				}
				if fwmark {
					wantVS += 2 // for pods and for the node
				}
				if len(vss) != wantVS {
					t.Errorf("%d virtual servers, want %d", len(vss), wantVS)
				}
			})
		}
	}
}

// TestSelectPerFamily checks that the categories are decided per family,
// as upstream's per-family proxiers do.
func TestSelectPerFamily(t *testing.T) {
	node := &servicecache.Node{Name: "node-1", Zone: "zone-a"}
	s := &servicecache.Service{
		Key:                 key("default", "ds"),
		ClusterIPs:          ips("10.96.0.1", "fd00:96::1"),
		ExternalPolicyLocal: true,
		Ports: []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080, Endpoints: []servicecache.Endpoint{
			// IPv4: usable zone hints, one local endpoint.
			cep("10.0.0.1:80", "RL", "zone-b", ""),
			cep("10.0.0.2:80", "R", "zone-a", ""),
			// IPv6: hints not usable (one missing), no local ready
			// endpoint but a local terminating one.
			cep("[fd00::1]:80", "R", "zone-a", ""),
			cep("[fd00::2]:80", "R", "", ""),
			cep("[fd00::3]:80", "STL", "", ""),
		}}},
	}
	vss := PlanService(s, node, Config{NodePortAddresses: ips("192.168.1.10", "fd00:1::10")})
	mark := ServiceMark(s.Key, "p", ProtoTCP)
	got := map[string]string{}
	for _, vs := range vss {
		var rs []string
		for _, r := range vs.RealServers {
			rs = append(rs, r.Key.String())
		}
		got[vs.Key.String()] = strings.Join(rs, " ")
	}
	want := map[string]string{
		"10.96.0.1:80/TCP":       "10.0.0.2:80",
		"[fd00:96::1]:80/TCP":    "[fd00::1]:80 [fd00::2]:80",
		"192.168.1.10:30080/TCP": "10.0.0.1:80",
		"[fd00:1::10]:30080/TCP": "[fd00::3]:80",
		// From inside the cluster, every endpoint of the family.
		FWMarkKey(true, mark).String():  "10.0.0.2:80",
		FWMarkKey(false, mark).String(): "[fd00::1]:80 [fd00::2]:80",
		// The node's own packets, with the masquerade mark.
		FWMarkKey(true, mark|MasqueradeMark).String():  "10.0.0.2:80",
		FWMarkKey(false, mark|MasqueradeMark).String(): "[fd00::1]:80 [fd00::2]:80",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %q, want %q", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %v", got)
	}
}

// TestSelectUnknownNode: without a node name nothing is local and no hint
// matches, even hints naming the empty node or zone.
func TestSelectUnknownNode(t *testing.T) {
	s := &servicecache.Service{
		Key:        key("default", "svc"),
		ClusterIPs: ips("10.96.0.1"),
		Ports: []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, Endpoints: []servicecache.Endpoint{
			{Addr: ip("10.0.0.1"), Port: 80, Ready: true, Serving: true, ZoneHints: []string{""}, NodeHints: []string{""}},
			{Addr: ip("10.0.0.2"), Port: 80, Ready: true, Serving: true, ZoneHints: []string{"zone-a"}, NodeHints: []string{"node-1"}},
		}}},
	}
	vss := PlanService(s, nil, Config{})
	if len(vss) != 1 || len(vss[0].RealServers) != 2 {
		t.Fatalf("got %v", vss)
	}
	s.InternalPolicyLocal = true
	vss = PlanService(s, &servicecache.Node{}, Config{})
	if len(vss) != 1 || len(vss[0].RealServers) != 0 {
		t.Fatalf("iTP Local on an unknown node: %v", vss[0].RealServers)
	}
}
