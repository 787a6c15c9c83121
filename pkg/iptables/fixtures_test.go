package iptables

import (
	"net/netip"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
	v1 "k8s.io/api/core/v1"
)

var (
	ip  = netip.MustParseAddr
	pfx = netip.MustParsePrefix
)

func ips(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, ip(a))
	}
	return out
}

func pfxs(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, pfx(p))
	}
	return out
}

func ep(addr string, port uint16, node string) servicecache.Endpoint {
	return servicecache.Endpoint{Addr: ip(addr), Port: port, Ready: true, Serving: true, NodeName: node}
}

func svcKey(name string) servicecache.ServiceKey {
	return servicecache.ServiceKey{Namespace: "default", Name: name}
}

// fullSnapshot is a dual-stack node with services that put entries in every
// set, without needing the xt_ipvs match (every load balancer's source
// ranges admit the node), so the kernel tests can apply it.
func fullSnapshot() *servicecache.Snapshot {
	return &servicecache.Snapshot{
		Node: servicecache.Node{Name: "node-a", Addresses: ips("192.168.10.5", "fd00:10::5")},
		Services: []*servicecache.Service{
			{
				Key: svcKey("dns"), Type: v1.ServiceTypeClusterIP,
				ClusterIPs: ips("10.96.0.10", "fd00:96::a"),
				Ports: []servicecache.ServicePort{
					{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, Endpoints: []servicecache.Endpoint{
						ep("10.244.1.3", 53, "node-a"), ep("10.244.2.3", 53, "node-b"), ep("fd00:244:0:1::3", 53, "node-a")}},
					{Name: "dns-tcp", Protocol: v1.ProtocolTCP, Port: 53, Endpoints: []servicecache.Endpoint{
						ep("10.244.1.3", 53, "node-a"), ep("10.244.2.3", 53, "node-b"), ep("fd00:244:0:1::3", 53, "node-a")}},
				},
			},
			{
				Key: svcKey("game"), Type: v1.ServiceTypeNodePort,
				ClusterIPs:          ips("10.96.0.30"),
				ExternalPolicyLocal: true,
				Ports: []servicecache.ServicePort{
					{Name: "sctp", Protocol: v1.ProtocolSCTP, Port: 3868, NodePort: 30868, Endpoints: []servicecache.Endpoint{
						ep("10.244.1.7", 3868, "node-a")}},
					{Name: "udp", Protocol: v1.ProtocolUDP, Port: 7777, NodePort: 30777, Endpoints: []servicecache.Endpoint{
						ep("10.244.1.7", 7777, "node-a")}},
				},
			},
			{
				Key: svcKey("ingress"), Type: v1.ServiceTypeLoadBalancer,
				ClusterIPs:      ips("fd00:96::1bb", "10.96.0.40"),
				ExternalIPs:     ips("198.51.100.9", "2001:db8:9::9"),
				LoadBalancerIPs: ips("192.0.2.60", "2001:db8::60"),
				Ports: []servicecache.ServicePort{
					{Name: "diameter", Protocol: v1.ProtocolSCTP, Port: 9899, NodePort: 30899},
					{Name: "https", Protocol: v1.ProtocolTCP, Port: 443, NodePort: 30443, Endpoints: []servicecache.Endpoint{
						ep("10.244.2.9", 8443, "node-b"), ep("fd00:244:0:2::9", 8443, "node-b")}},
					{Name: "quic", Protocol: v1.ProtocolUDP, Port: 443, NodePort: 30444},
				},
			},
			{
				Key: svcKey("web"), Type: v1.ServiceTypeLoadBalancer,
				ClusterIPs:               ips("10.96.0.20", "fd00:96::14"),
				ExternalIPs:              ips("203.0.113.7"),
				LoadBalancerIPs:          ips("192.0.2.50", "2001:db8::50"),
				LoadBalancerSourceRanges: pfxs("192.168.10.0/24", "198.18.0.0/15", "fd00:10::/64"),
				ExternalPolicyLocal:      true,
				HealthCheckNodePort:      32000,
				Ports: []servicecache.ServicePort{
					{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080, Endpoints: []servicecache.Endpoint{
						ep("10.244.1.5", 8080, "node-a"), ep("10.244.2.5", 8080, "node-b"),
						ep("fd00:244:0:1::5", 8080, "node-a")}},
				},
			},
		},
	}
}

// fullConfig goes with fullSnapshot: 203.0.113.7 is a host address, so it
// is not in KUBE-IPVS-IPS.
func fullConfig() Config {
	return Config{
		Families:       []Family{IPv4, IPv6},
		ClusterCIDRs:   pfxs("10.244.0.0/16", "fd00:244::/56"),
		LocalAddresses: ips("127.0.0.1", "192.168.10.5", "203.0.113.7", "::1", "fd00:10::5", "fe80::1"),
		NodePortIPs:    ips("192.168.10.5", "203.0.113.7", "fd00:10::5"),
		// As the IPVS plan gives them for the externalTrafficPolicy:
		// Local load balancer: its address and a node port.
		ExternalLocalMarks: []Entry{
			{IP: ips("192.0.2.50")[0], Proto: ProtoTCP, Port: 80, SkbMark: 0x10000, SkbMarkMask: 0x3fff0000},
			{IP: ips("192.168.10.5")[0], Proto: ProtoTCP, Port: 31080, SkbMark: 0x10000, SkbMarkMask: 0x3fff0000},
			{IP: ips("2001:db8::50")[0], Proto: ProtoTCP, Port: 80, SkbMark: 0x10000, SkbMarkMask: 0x3fff0000},
		},
	}
}
