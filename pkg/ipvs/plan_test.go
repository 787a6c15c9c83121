package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// describePlan is the golden text of a plan: its Dump, then which Service
// port, kind and binding each virtual server comes from.
func describePlan(d *Desired) string {
	var b strings.Builder
	b.WriteString(d.Dump())
	b.WriteString("# by service\n")
	svcs := slices.SortedFunc(maps.Keys(d.ByService), servicecache.ServiceKey.Compare)
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
	for _, p := range d.ExcludeCIDRs {
		fmt.Fprintf(&b, "# exclude %s\n", p)
	}
	for _, p := range d.Problems {
		fmt.Fprintf(&b, "# problem %s\n", p)
	}
	return b.String()
}

// onNode sets the node the snapshot is planned for.
func snapOnNode(snap *servicecache.Snapshot, name, zone string) *servicecache.Snapshot {
	snap.Node = servicecache.Node{Name: name, Zone: zone}
	return snap
}

// at puts an endpoint on a node.
func epAt(e servicecache.Endpoint, node string) servicecache.Endpoint {
	e.NodeName = node
	return e
}

// hinted sets an endpoint's topology hints (comma-separated, "" for none).
func epHints(e servicecache.Endpoint, zones, nodes string) servicecache.Endpoint {
	if zones != "" {
		e.ZoneHints = strings.Split(zones, ",")
	}
	if nodes != "" {
		e.NodeHints = strings.Split(nodes, ",")
	}
	return e
}

// with applies changes to a Service.
func svcWith(s *servicecache.Service, change func(*servicecache.Service)) *servicecache.Service {
	change(s)
	return s
}

// annotated sets a Service's annotations from key, value pairs.
func svcAnnotated(s *servicecache.Service, kv ...string) *servicecache.Service {
	s.Annotations = map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		s.Annotations[kv[i]] = kv[i+1]
	}
	return s
}

func setETPLocal(s *servicecache.Service) { s.ExternalPolicyLocal = true }
func setITPLocal(s *servicecache.Service) { s.InternalPolicyLocal = true }

// policyServices are the Services of the traffic policy goldens, planned
// on node-a: each has endpoints on node-a and node-b, or on node-b only.
func policyServices(change func(*servicecache.Service)) *servicecache.Snapshot {
	local := func(name string, vip string) *servicecache.Service {
		return svcWith(svc("default", name, ips(vip), port("http", v1.ProtocolTCP, 80, 30080,
			epAt(ep("10.244.1.2", 8080, "ready"), "node-a"),
			epAt(ep("10.244.2.2", 8080, "ready"), "node-b"),
			epAt(ep("10.244.2.3", 8080, "ready"), "node-b"),
		)), func(s *servicecache.Service) {
			s.ExternalIPs = ips("203.0.113.10")
			s.LoadBalancerIPs = ips("198.51.100.10")
			change(s)
		})
	}
	remote := func(name string, vip string) *servicecache.Service {
		return svcWith(svc("default", name, ips(vip), port("http", v1.ProtocolTCP, 80, 30081,
			epAt(ep("10.244.2.2", 8080, "ready"), "node-b"),
			epAt(ep("10.244.2.3", 8080, "ready"), "node-b"),
		)), func(s *servicecache.Service) {
			s.ExternalIPs = ips("203.0.113.11")
			s.LoadBalancerIPs = ips("198.51.100.11")
			change(s)
		})
	}
	return snapOnNode(snapshot(local("with-local", "10.96.10.1"), remote("without-local", "10.96.10.2")), "node-a", "zone-a")
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
		// The older Service keeps a load-balancer IP and port, though it
		// comes last by name; the other port of the address is not
		// contested.
		name: "conflict-older-wins",
		snap: snapshot(
			svcWith(svc("a", "new", ips("10.96.1.1"), port("https", v1.ProtocolTCP, 443, 0, ep("10.244.1.1", 8443, "ready"))),
				func(s *servicecache.Service) {
					s.LoadBalancerIPs = ips("198.51.100.7")
					s.Created = time.Unix(2000, 0)
				}),
			svcWith(svc("z", "old", ips("10.96.1.2"),
				port("https", v1.ProtocolTCP, 443, 0, ep("10.244.2.2", 8443, "ready")),
				port("http", v1.ProtocolTCP, 80, 0, ep("10.244.2.2", 8080, "ready"))),
				func(s *servicecache.Service) {
					s.LoadBalancerIPs = ips("198.51.100.7")
					s.Created = time.Unix(1000, 0)
				}),
		),
	}, {
		// Three claimants of one external IP and port, as an external IP,
		// a load-balancer IP and a cluster IP: the oldest keeps it, the
		// others name it. A UDP port of the same number is another
		// virtual server.
		name: "conflict-three-kinds",
		snap: snapshot(
			svcWith(svc("a", "external", ips("10.96.2.1"), port("dns", v1.ProtocolTCP, 53, 0, ep("10.244.1.1", 53, "ready"))),
				func(s *servicecache.Service) {
					s.ExternalIPs = ips("10.96.2.3")
					s.Created = time.Unix(2000, 0)
				}),
			svcWith(svc("b", "lb", ips("10.96.2.2"), port("dns", v1.ProtocolTCP, 53, 0, ep("10.244.2.1", 53, "ready"))),
				func(s *servicecache.Service) {
					s.LoadBalancerIPs = ips("10.96.2.3")
					s.Created = time.Unix(3000, 0)
				}),
			svcWith(svc("c", "cluster", ips("10.96.2.3"),
				port("dns", v1.ProtocolTCP, 53, 0, ep("10.244.3.1", 53, "ready")),
				port("dns-udp", v1.ProtocolUDP, 53, 0, ep("10.244.3.1", 53, "ready"))),
				func(s *servicecache.Service) { s.Created = time.Unix(1000, 0) }),
		),
	}, {
		// Cannot happen through the API, planned by the same rule: two
		// Services with one cluster IP, and a cluster IP on a node
		// address (bound) that an older Service's node port (not bound)
		// takes, so the address is not bound.
		name: "conflict-cluster-ip-and-node-port",
		cfg:  Config{NodePortAddresses: ips("192.168.1.10")},
		snap: snapshot(
			svcWith(svc("a", "twin", ips("10.96.3.3"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.1", 80, "ready"))),
				func(s *servicecache.Service) { s.Created = time.Unix(2000, 0) }),
			svcWith(svc("b", "twin", ips("10.96.3.3"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.2.1", 80, "ready"))),
				func(s *servicecache.Service) { s.Created = time.Unix(1000, 0) }),
			svcWith(svc("c", "on-node", ips("192.168.1.10"), port("http", v1.ProtocolTCP, 30080, 0, ep("10.244.3.1", 80, "ready"))),
				func(s *servicecache.Service) { s.Created = time.Unix(2000, 0) }),
			svcWith(svc("d", "nodeport", ips("10.96.3.4"), port("http", v1.ProtocolTCP, 80, 30080, ep("10.244.4.1", 80, "ready"))),
				func(s *servicecache.Service) { s.Created = time.Unix(1000, 0) }),
		),
	}, {
		// iTP Local: the cluster IP balances to this node's endpoints
		// only, or to none; external traffic (eTP Cluster) to all.
		name: "itp-local",
		cfg:  Config{NodePortAddresses: ips("192.168.1.10")},
		snap: policyServices(setITPLocal),
	}, {
		// iTP Local never falls back to the cluster's endpoints.
		name: "itp-local-fallback-switch",
		cfg:  Config{NodePortAddresses: ips("192.168.1.10"), LocalFallbackToCluster: true},
		snap: policyServices(setITPLocal),
	}, {
		// eTP Local: node port, external and load-balancer IPs balance
		// to this node's endpoints, or to none; the cluster IP to all.
		name: "etp-local",
		cfg:  Config{NodePortAddresses: ips("192.168.1.10")},
		snap: policyServices(setETPLocal),
	}, {
		// Upstream IPVS mode: with no local endpoint, the cluster's.
		name: "etp-local-fallback",
		cfg:  Config{NodePortAddresses: ips("192.168.1.10"), LocalFallbackToCluster: true},
		snap: policyServices(setETPLocal),
	}, {
		name: "itp-etp-local",
		cfg:  Config{NodePortAddresses: ips("192.168.1.10")},
		snap: policyServices(func(s *servicecache.Service) { setITPLocal(s); setETPLocal(s) }),
	}, {
		// Ready first, then serving terminating, separately for the
		// cluster and the local categories.
		name: "terminating-per-category",
		cfg:  Config{NodePortAddresses: ips("192.168.1.10")},
		snap: snapOnNode(snapshot(
			// Local: only a terminating one; cluster: a remote ready one.
			svcWith(svc("default", "etp-local-term", ips("10.96.11.1"), port("http", v1.ProtocolTCP, 80, 30090,
				epAt(ep("10.244.1.2", 8080, "terminating"), "node-a"),
				epAt(ep("10.244.1.3", 8080, "gone"), "node-a"),
				epAt(ep("10.244.2.2", 8080, "ready"), "node-b"),
			)), setETPLocal),
			svcWith(svc("default", "itp-local-term", ips("10.96.11.2"), port("http", v1.ProtocolTCP, 80, 30091,
				epAt(ep("10.244.1.2", 8080, "terminating"), "node-a"),
				epAt(ep("10.244.2.2", 8080, "ready"), "node-b"),
			)), setITPLocal),
			// Local: a ready one beats a terminating one; cluster: only
			// terminating ones, remote and local.
			svcWith(svc("default", "cluster-term", ips("10.96.11.3"), port("http", v1.ProtocolTCP, 80, 30092,
				epAt(ep("10.244.1.2", 8080, "terminating"), "node-a"),
				epAt(ep("10.244.2.2", 8080, "terminating"), "node-b"),
				epAt(ep("10.244.2.3", 8080, "unready"), "node-b"),
			)), setETPLocal),
			svcWith(svc("default", "local-ready-first", ips("10.96.11.4"), port("http", v1.ProtocolTCP, 80, 30093,
				epAt(ep("10.244.1.2", 8080, "terminating"), "node-a"),
				epAt(ep("10.244.1.3", 8080, "ready"), "node-a"),
			)), setITPLocal),
		), "node-a", "zone-a"),
	}, {
		// Usable zone hints (PreferSameZone, PreferClose): the ready
		// endpoints hinted for zone-a.
		name: "topology-zone",
		snap: snapOnNode(snapshot(
			svcWith(svc("default", "same-zone", ips("10.96.12.1"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-a", ""),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-b", ""),
				epHints(epAt(ep("10.244.3.2", 8080, "ready"), "node-c"), "zone-a", ""),
				epHints(epAt(ep("10.244.3.3", 8080, "unready"), "node-c"), "", ""),
			)), func(s *servicecache.Service) { s.TrafficDistribution = "PreferSameZone" }),
			svcWith(svc("default", "prefer-close", ips("10.96.12.2"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-b", ""),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-a,zone-b", ""),
			)), func(s *servicecache.Service) { s.TrafficDistribution = "PreferClose" }),
		), "node-a", "zone-a"),
	}, {
		// Hints that must be ignored: every ready endpoint is used.
		name: "topology-zone-unusable",
		snap: snapOnNode(snapshot(
			// A ready endpoint has no hint.
			svc("default", "missing-hint", ips("10.96.13.1"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-a", ""),
				epAt(ep("10.244.2.2", 8080, "ready"), "node-b"),
			)),
			// No endpoint for this node's zone.
			svc("default", "other-zones", ips("10.96.13.2"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-b", ""),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-c", ""),
			)),
			// Only an unready endpoint is hinted for this zone.
			svc("default", "unready-in-zone", ips("10.96.13.3"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "unready"), "node-a"), "zone-a", ""),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-b", ""),
				epHints(epAt(ep("10.244.2.3", 8080, "ready"), "node-b"), "zone-c", ""),
			)),
			// No ready endpoint: the terminating fallback ignores hints.
			svc("default", "terminating", ips("10.96.13.4"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "terminating"), "node-a"), "zone-a", ""),
				epHints(epAt(ep("10.244.2.2", 8080, "terminating"), "node-b"), "zone-b", ""),
			)),
		), "node-a", "zone-a"),
	}, {
		// A node without a zone label ignores zone hints.
		name: "topology-node-without-zone",
		snap: snapOnNode(snapshot(
			svc("default", "same-zone", ips("10.96.12.1"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-a", ""),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-b", ""),
			)),
		), "node-a", ""),
	}, {
		// PreferSameNode: node hints when usable, else zone hints.
		name: "topology-same-node",
		snap: snapOnNode(snapshot(
			svcWith(svc("default", "same-node", ips("10.96.14.1"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-a", "node-a"),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-a", "node-b"),
				epHints(epAt(ep("10.244.3.2", 8080, "ready"), "node-c"), "zone-b", "node-c"),
			)), func(s *servicecache.Service) { s.TrafficDistribution = "PreferSameNode" }),
			// No endpoint on this node: the zone hints.
			svcWith(svc("default", "zone-fallback", ips("10.96.14.2"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-a", "node-b"),
				epHints(epAt(ep("10.244.3.2", 8080, "ready"), "node-c"), "zone-b", "node-c"),
			)), func(s *servicecache.Service) { s.TrafficDistribution = "PreferSameNode" }),
			// A node hint missing: the zone hints.
			svcWith(svc("default", "node-hint-missing", ips("10.96.14.3"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-a", "node-a"),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-a", ""),
				epHints(epAt(ep("10.244.3.2", 8080, "ready"), "node-c"), "zone-b", "node-c"),
			)), func(s *servicecache.Service) { s.TrafficDistribution = "PreferSameNode" }),
			// Neither usable: every ready endpoint.
			svcWith(svc("default", "none-usable", ips("10.96.14.4"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-b", "node-b"),
				epHints(epAt(ep("10.244.3.2", 8080, "ready"), "node-c"), "", "node-c"),
			)), func(s *servicecache.Service) { s.TrafficDistribution = "PreferSameNode" }),
		), "node-a", "zone-a"),
	}, {
		// Topology restricts the cluster endpoints of external traffic
		// too (eTP Cluster), never the local ones (eTP Local).
		name: "topology-external",
		cfg:  Config{NodePortAddresses: ips("192.168.1.10")},
		snap: snapOnNode(snapshot(
			svc("default", "etp-cluster", ips("10.96.15.1"), port("http", v1.ProtocolTCP, 80, 30100,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-b", ""),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-a", ""),
			)),
			svcWith(svc("default", "etp-local", ips("10.96.15.2"), port("http", v1.ProtocolTCP, 80, 30101,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-b", ""),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-a", ""),
			)), setETPLocal),
		), "node-a", "zone-a"),
	}, {
		// Each family is categorized on its own.
		name: "dual-stack-policies",
		cfg:  Config{NodePortAddresses: nodeAddrs},
		snap: snapOnNode(snapshot(
			svcWith(svc("default", "ds-local", ips("10.96.16.1", "fd00:96::16:1"), port("http", v1.ProtocolTCP, 80, 30110,
				epAt(ep("10.244.1.2", 8080, "ready"), "node-a"),
				epAt(ep("10.244.2.2", 8080, "ready"), "node-b"),
				epAt(ep("fd00:244::2:2", 8080, "ready"), "node-b"),
				epAt(ep("fd00:244::1:3", 8080, "terminating"), "node-a"),
			)), setETPLocal),
			svc("default", "ds-topology", ips("10.96.16.2", "fd00:96::16:2"), port("http", v1.ProtocolTCP, 80, 0,
				epHints(epAt(ep("10.244.1.2", 8080, "ready"), "node-a"), "zone-a", ""),
				epHints(epAt(ep("10.244.2.2", 8080, "ready"), "node-b"), "zone-b", ""),
				epHints(epAt(ep("fd00:244::1:2", 8080, "ready"), "node-a"), "zone-a", ""),
				epAt(ep("fd00:244::2:2", 8080, "ready"), "node-b"),
			)),
			svcWith(svc("default", "ds-itp-local", ips("10.96.16.3", "fd00:96::16:3"), port("http", v1.ProtocolTCP, 80, 0,
				epAt(ep("10.244.2.2", 8080, "ready"), "node-b"),
				epAt(ep("fd00:244::1:2", 8080, "ready"), "node-a"),
			)), setITPLocal),
		), "node-a", "zone-a"),
	}, {
		name: "scheduler-annotation",
		snap: snapshot(
			svcAnnotated(svc("default", "sh", ips("10.96.20.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "sh"),
			svcAnnotated(svc("default", "wlc", ips("10.96.20.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, " wlc "),
			svcAnnotated(svc("default", "unknown", ips("10.96.20.3"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "fastest"),
			svcAnnotated(svc("default", "empty", ips("10.96.20.4"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, ""),
			svcAnnotated(svc("default", "mh", ips("10.96.20.5"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "mh"),
			svcAnnotated(svc("default", "other-annotation", ips("10.96.20.6"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				"ipvs.kube-ipvs-proxy.io/something", "x"),
		),
	}, {
		// The global scheduler is mh: its default flag (mh-port) applies
		// to Services that fall back to it, not to those that leave it.
		name: "scheduler-annotation-global-mh",
		cfg:  Config{Scheduler: "mh"},
		snap: snapshot(
			svcAnnotated(svc("default", "rr", ips("10.96.21.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "rr"),
			svcAnnotated(svc("default", "unknown", ips("10.96.21.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "MH"),
		),
	}, {
		name: "sched-flags",
		snap: snapshot(
			svcAnnotated(svc("default", "mh-both", ips("10.96.22.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "mh", AnnotationSchedFlags, "mh-fallback, mh-port"),
			svcAnnotated(svc("default", "mh-fallback", ips("10.96.22.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "mh", AnnotationSchedFlags, "mh-fallback"),
			svcAnnotated(svc("default", "mh-none", ips("10.96.22.3"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "mh", AnnotationSchedFlags, ""),
			svcAnnotated(svc("default", "mh-unknown", ips("10.96.22.4"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "mh", AnnotationSchedFlags, "mh-port,mh-bogus"),
			svcAnnotated(svc("default", "sh-port", ips("10.96.22.5"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "sh", AnnotationSchedFlags, "sh-port,sh-fallback"),
			svcAnnotated(svc("default", "sh-default", ips("10.96.22.6"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "sh"),
			svcAnnotated(svc("default", "sh-with-mh-flag", ips("10.96.22.7"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "sh", AnnotationSchedFlags, "mh-port"),
			svcAnnotated(svc("default", "rr-with-flag", ips("10.96.22.8"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationSchedFlags, "mh-port"),
			// Both annotations wrong: two problems, global scheduler.
			svcAnnotated(svc("default", "both-wrong", ips("10.96.22.9"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				AnnotationScheduler, "maglev", AnnotationSchedFlags, "mh-port"),
		),
	}, {
		name: "affinity-variants",
		snap: snapshot(
			svcWith(svc("default", "default-timeout", ips("10.96.23.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				func(s *servicecache.Service) { s.AffinityTimeoutSeconds = 10800 }),
			svcWith(svc("default", "short-timeout", ips("10.96.23.2"), port("http", v1.ProtocolTCP, 80, 30023, ep("10.244.1.2", 80, "ready"))),
				func(s *servicecache.Service) { s.AffinityTimeoutSeconds = 60 }),
			svc("default", "no-affinity", ips("10.96.23.3"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
			// Affinity with mh and its flags.
			svcAnnotated(svcWith(svc("default", "mh-affinity", ips("10.96.23.4"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
				func(s *servicecache.Service) { s.AffinityTimeoutSeconds = 300 }), AnnotationScheduler, "mh"),
		),
		cfg: Config{NodePortAddresses: ips("192.168.1.10")},
	}, {
		// As upstream, exclusion does not stop planning: cluster,
		// external, load-balancer IPs and node addresses inside the
		// excluded CIDRs are planned as any other.
		name: "exclude-cidrs",
		cfg: Config{
			NodePortAddresses: nodeAddrs,
			ExcludeCIDRs: []netip.Prefix{
				netip.MustParsePrefix("10.96.100.0/24"),
				netip.MustParsePrefix("203.0.113.1/32"),
				netip.MustParsePrefix("fd00:1::/64"),
				netip.MustParsePrefix("::ffff:198.51.100.0/120"), // normalized to 198.51.100.0/24
				netip.MustParsePrefix("10.97.0.1/16"),            // masked
			},
		},
		snap: snapshot(
			svcWith(svc("default", "excluded-vip", ips("10.96.100.1", "fd00:96::100:1"), port("http", v1.ProtocolTCP, 80, 30200,
				ep("10.244.1.2", 80, "ready"), ep("fd00:244::1:2", 80, "ready"))),
				func(s *servicecache.Service) {
					s.ExternalIPs = ips("203.0.113.1", "203.0.113.2")
					s.LoadBalancerIPs = ips("198.51.100.1")
				}),
			svc("default", "masked", ips("10.97.3.3"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
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
	if got := PlanService(nil, nil, Config{}); got != nil {
		t.Errorf("PlanService(nil) = %v", got)
	}
}

// TestPlanSharesRealServers checks that the virtual servers of one port and
// family share one real server slice rather than a copy each.
func TestPlanSharesRealServers(t *testing.T) {
	s := svc("default", "np", ips("10.96.5.5"), port("http", v1.ProtocolTCP, 80, 30080, ep("10.244.1.2", 8080, "ready")))
	s.ExternalIPs = ips("203.0.113.1")
	vss := PlanService(s, nil, Config{NodePortAddresses: ips("192.168.1.10")})
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

// BenchmarkPlanPolicies10k plans Services that use every selection path:
// zone hints on all, externalTrafficPolicy Local on a third and
// internalTrafficPolicy Local on another third, endpoints over three nodes.
func BenchmarkPlanPolicies10k(b *testing.B) {
	snap := benchSnapshot(10_000)
	svcs := make([]*servicecache.Service, len(snap.Services))
	for i, old := range snap.Services {
		s := *old
		s.Ports = slices.Clone(s.Ports)
		eps := slices.Clone(s.Ports[0].Endpoints)
		for j := range eps {
			eps[j].NodeName = fmt.Sprintf("node-%d", j%3)
			eps[j].ZoneHints = []string{fmt.Sprintf("zone-%d", j%2)}
		}
		for j := range s.Ports {
			s.Ports[j].Endpoints = eps
			s.Ports[j].NodePort = uint16(30000 + i%2000)
		}
		switch i % 3 {
		case 1:
			s.ExternalPolicyLocal = true
		case 2:
			s.InternalPolicyLocal = true
		}
		svcs[i] = &s
	}
	snap = snapOnNode(snapshot(svcs...), "node-0", "zone-0")
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

// TestPlanServiceConfigChangesUpdate checks that a change of a Service's
// affinity, scheduler or scheduler flags changes its virtual servers'
// config, so that Diff updates them in place (ipvsadm -E) and leaves the
// real servers alone.
func TestPlanServiceConfigChangesUpdate(t *testing.T) {
	base := func(change func(*servicecache.Service)) *servicecache.Snapshot {
		s := svc("default", "web", ips("10.96.0.20"), port("http", v1.ProtocolTCP, 80, 30080,
			ep("10.244.1.2", 8080, "ready"), ep("10.244.1.3", 8080, "ready")))
		change(s)
		return snapshot(s)
	}
	cfg := Config{NodePortAddresses: ips("192.168.1.10")}
	none := func(*servicecache.Service) {}
	affinity := func(sec int32) func(*servicecache.Service) {
		return func(s *servicecache.Service) { s.AffinityTimeoutSeconds = sec }
	}
	annotate := func(kv ...string) func(*servicecache.Service) {
		return func(s *servicecache.Service) { svcAnnotated(s, kv...) }
	}
	tests := []struct {
		name     string
		from, to func(*servicecache.Service)
	}{
		{"affinity on", none, affinity(10800)},
		{"affinity off", affinity(10800), none},
		{"affinity timeout", affinity(10800), affinity(60)},
		{"scheduler annotation", none, annotate(AnnotationScheduler, "lc")},
		{"scheduler annotation removed", annotate(AnnotationScheduler, "sh"), none},
		{"mh flags", annotate(AnnotationScheduler, "mh"), annotate(AnnotationScheduler, "mh", AnnotationSchedFlags, "mh-fallback")},
		{"mh flags cleared", annotate(AnnotationScheduler, "mh"), annotate(AnnotationScheduler, "mh", AnnotationSchedFlags, "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from, to := Plan(base(tt.from), cfg), Plan(base(tt.to), cfg)
			ops := Diff(&from.State, &to.State)
			if len(ops) != 2 {
				t.Fatalf("want one update per virtual server, got %v", ops)
			}
			for _, op := range ops {
				if op.Kind != OpUpdateService || op.VS != to.VirtualServers[op.VS.Key] {
					t.Errorf("unexpected op %v", op)
				}
			}
			if back := Diff(&to.State, &from.State); len(back) != 2 {
				t.Errorf("reverse: %v", back)
			}
			if same := Diff(&to.State, &Plan(base(tt.to), cfg).State); len(same) != 0 {
				t.Errorf("replanning changed something: %v", same)
			}
		})
	}
}

func TestExcluded(t *testing.T) {
	cfg := Config{ExcludeCIDRs: []netip.Prefix{
		netip.MustParsePrefix("10.96.100.7/24"),         // masked to 10.96.100.0/24
		netip.MustParsePrefix("::ffff:203.0.113.0/120"), // 203.0.113.0/24
		netip.MustParsePrefix("fd00:1::/64"),            //
		netip.MustParsePrefix("::ffff:0:0/80"),          // wider than the mapped range: as written
		{},                                              // invalid: dropped
	}}
	tests := []struct {
		addr string
		want bool
	}{
		{"10.96.100.1", true},
		{"10.96.100.255", true},
		{"10.96.101.1", false},
		{"::ffff:10.96.100.1", true},
		{"203.0.113.9", true},
		{"203.0.114.9", false},
		{"fd00:1::5", true},
		{"fd00:2::5", false},
		{"::1:2", true}, // inside ::ffff:0:0/80 = ::/80
	}
	for _, tt := range tests {
		if got := Excluded(cfg, ip(tt.addr)); got != tt.want {
			t.Errorf("Excluded(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if Excluded(cfg, netip.Addr{}) || Excluded(Config{}, ip("10.96.100.1")) {
		t.Error("excluded without reason")
	}
	d := Plan(snapshot(), cfg)
	for _, tt := range tests {
		if got := d.Excluded(ip(tt.addr)); got != tt.want {
			t.Errorf("Desired.Excluded(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	var nilD *Desired
	if nilD.Excluded(ip("10.96.100.1")) {
		t.Error("nil Desired excludes")
	}
	// The caller's slice is not modified by normalization.
	if cfg.ExcludeCIDRs[0] != netip.MustParsePrefix("10.96.100.7/24") {
		t.Error("Config.ExcludeCIDRs modified")
	}
}

// TestPlanNodeAddressesExcluded: an excluded node address stays a node
// port address of the plan (upstream programs NodePorts there too).
func TestPlanNodeAddressesExcluded(t *testing.T) {
	nodeAddrs := ips("192.168.1.10", "192.168.2.10")
	cfg := Config{NodePortAddresses: nodeAddrs, ExcludeCIDRs: []netip.Prefix{netip.MustParsePrefix("192.168.2.0/24")}}
	d := Plan(snapshot(), cfg)
	if !slices.Equal(d.NodePortAddresses, ips("192.168.1.10", "192.168.2.10")) {
		t.Errorf("NodePortAddresses %v", d.NodePortAddresses)
	}
	if !slices.Equal(nodeAddrs, ips("192.168.1.10", "192.168.2.10")) {
		t.Error("Config.NodePortAddresses modified")
	}
}

// TestPlanIPv4Only: without IPv6 iptables the planner plans no IPv6
// virtual server, even for dual-stack Services and IPv6 node addresses.
func TestPlanIPv4Only(t *testing.T) {
	s := svc("default", "web", ips("10.96.0.10", "fd00:96::10"), port("http", v1.ProtocolTCP, 80, 30080,
		ep("10.244.1.2", 8080, "ready"), ep("fd00:244::2", 8080, "ready")))
	cfg := Config{NodePortAddresses: ips("172.30.0.11", "fd00:30::11"), IPv4Only: true}
	d := Plan(snapshot(s), cfg)
	var got []netip.Addr
	for k := range d.VirtualServers {
		got = append(got, k.Addr)
	}
	slices.SortFunc(got, netip.Addr.Compare)
	if want := ips("10.96.0.10", "172.30.0.11"); !slices.Equal(got, want) {
		t.Errorf("virtual servers on %v, want %v", got, want)
	}
	cfg.IPv4Only = false
	if n := len(Plan(snapshot(s), cfg).VirtualServers); n != 4 {
		t.Errorf("dual-stack plan has %d virtual servers, want 4", n)
	}
}
