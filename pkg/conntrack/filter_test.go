package conntrack

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

var (
	keyDNS  = servicecache.ServiceKey{Namespace: "kube-system", Name: "dns"}
	keyWeb  = servicecache.ServiceKey{Namespace: "default", Name: "web"}
	keyDNS2 = servicecache.ServiceKey{Namespace: "kube-system", Name: "dns2"}

	nodeAddrs = []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("fd00:30::11")}
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func aps(s ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(s))
	for _, x := range s {
		out = append(out, ap(x))
	}
	return out
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(s))
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

// ep is a ready, serving endpoint "addr:port".
func ep(s string) servicecache.Endpoint {
	a := ap(s)
	return servicecache.Endpoint{Addr: a.Addr(), Port: a.Port(), Ready: true, Serving: true, NodeName: "n1"}
}

// terminating is a serving, terminating endpoint.
func terminating(s string) servicecache.Endpoint {
	e := ep(s)
	e.Ready, e.Terminating = false, true
	return e
}

// notServing is a terminating endpoint that no longer serves.
func notServing(s string) servicecache.Endpoint {
	e := terminating(s)
	e.Serving = false
	return e
}

func udp(name string, port, nodePort uint16, eps ...servicecache.Endpoint) servicecache.ServicePort {
	return servicecache.ServicePort{Name: name, Protocol: v1.ProtocolUDP, Port: port, NodePort: nodePort, Endpoints: eps}
}

func tcp(name string, port uint16, eps ...servicecache.Endpoint) servicecache.ServicePort {
	return servicecache.ServicePort{Name: name, Protocol: v1.ProtocolTCP, Port: port, Endpoints: eps}
}

func sctp(name string, port uint16, eps ...servicecache.Endpoint) servicecache.ServicePort {
	return servicecache.ServicePort{Name: name, Protocol: v1.ProtocolSCTP, Port: port, Endpoints: eps}
}

// svc builds a Service; opts adjust it.
func svc(key servicecache.ServiceKey, clusterIPs []netip.Addr, ports []servicecache.ServicePort, opts ...func(*servicecache.Service)) *servicecache.Service {
	s := &servicecache.Service{Key: key, Type: v1.ServiceTypeClusterIP, ClusterIPs: clusterIPs, Ports: ports}
	for _, o := range opts {
		o(s)
	}
	return s
}

func withExternal(ips ...string) func(*servicecache.Service) {
	return func(s *servicecache.Service) { s.ExternalIPs = addrs(ips...) }
}

func withLB(ips ...string) func(*servicecache.Service) {
	return func(s *servicecache.Service) { s.LoadBalancerIPs = addrs(ips...) }
}

func ports(p ...servicecache.ServicePort) []servicecache.ServicePort { return p }

func snap(svcs ...*servicecache.Service) *servicecache.Snapshot {
	s := &servicecache.Snapshot{Node: servicecache.Node{Name: "n1", Addresses: nodeAddrs}}
	for _, x := range svcs {
		if x != nil {
			s.Services = append(s.Services, x)
		}
	}
	slices.SortFunc(s.Services, func(a, b *servicecache.Service) int {
		if a.Key.Less(b.Key) {
			return -1
		}
		if b.Key.Less(a.Key) {
			return 1
		}
		return 0
	})
	return s
}

func live(key servicecache.ServiceKey, port string, front []netip.AddrPort, serving []netip.AddrPort) Filter {
	return Filter{Service: key, PortName: port, Protocol: v1.ProtocolUDP, Frontends: front, Backends: serving}
}

func removed(key servicecache.ServiceKey, port string, front []netip.AddrPort, former []netip.AddrPort) Filter {
	return Filter{Service: key, PortName: port, Protocol: v1.ProtocolUDP, Frontends: front, Backends: former, Removed: true}
}

var clusterDNS = addrs("10.96.0.10")

func TestStaleEntries(t *testing.T) {
	dnsWith := func(eps ...servicecache.Endpoint) *servicecache.Service {
		return svc(keyDNS, clusterDNS, ports(tcp("dns-tcp", 53, eps...), udp("dns", 53, 0, eps...)))
	}
	base := dnsWith(ep("10.244.1.5:5353"), ep("10.244.2.6:5353"))
	web := svc(keyWeb, addrs("10.96.0.20"), ports(tcp("http", 80, ep("10.244.1.7:8080"))))

	tests := []struct {
		name     string
		old, cur *servicecache.Snapshot
		changed  []servicecache.ServiceKey // nil: both Services
		want     []Filter
	}{
		{
			name: "endpoint removed: entries to the cluster IP not DNATed to the remaining one",
			old:  snap(base),
			cur:  snap(dnsWith(ep("10.244.2.6:5353"))),
			want: []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.2.6:5353"))},
		},
		{
			name: "endpoint stopped serving",
			old:  snap(base),
			cur:  snap(dnsWith(notServing("10.244.1.5:5353"), ep("10.244.2.6:5353"))),
			want: []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.2.6:5353"))},
		},
		{
			name: "endpoint terminating but still serving: its flows stay",
			old:  snap(base),
			cur:  snap(dnsWith(terminating("10.244.1.5:5353"), ep("10.244.2.6:5353"))),
		},
		{
			name: "endpoint added to a port that had some: nothing can be stale",
			old:  snap(base),
			cur:  snap(dnsWith(ep("10.244.1.5:5353"), ep("10.244.2.6:5353"), ep("10.244.3.9:5353"))),
		},
		{
			name: "first endpoint: the entries recorded with no endpoint go",
			old:  snap(dnsWith()),
			cur:  snap(dnsWith(ep("10.244.1.5:5353"))),
			want: []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.1.5:5353"))},
		},
		{
			name: "last endpoint gone: every entry to the frontend goes",
			old:  snap(base),
			cur:  snap(dnsWith()),
			want: []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), nil)},
		},
		{
			name: "still no endpoint: nothing",
			old:  snap(dnsWith()),
			cur:  snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 0)), func(s *servicecache.Service) { s.AffinityTimeoutSeconds = 10 })),
		},
		{
			name: "endpoint's port changed (targetPort)",
			old:  snap(base),
			cur:  snap(dnsWith(ep("10.244.1.5:5354"), ep("10.244.2.6:5354"))),
			want: []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.1.5:5354", "10.244.2.6:5354"))},
		},
		{
			name: "TCP and SCTP ports are left alone (upstream cleans UDP only)",
			old: snap(svc(keyWeb, addrs("10.96.0.20"), ports(tcp("http", 80, ep("10.244.1.7:8080")),
				sctp("s", 9000, ep("10.244.1.7:9000"))))),
			cur: snap(svc(keyWeb, addrs("10.96.0.20"), ports(tcp("http", 80), sctp("s", 9000)))),
		},
		{
			name:    "an unchanged Service listed as changed costs nothing",
			old:     snap(base, web),
			cur:     snap(base, web),
			changed: []servicecache.ServiceKey{keyDNS},
		},
		{
			name:    "only the listed Services are looked at",
			old:     snap(base),
			cur:     snap(dnsWith()),
			changed: []servicecache.ServiceKey{keyWeb},
		},
		{
			name: "no old snapshot: every UDP port of the listed Services, as a full reconcile",
			old:  nil,
			cur:  snap(base, web),
			want: []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.1.5:5353", "10.244.2.6:5353"))},
		},
		{
			name: "new Service: entries to its frontends not going to its endpoints",
			old:  snap(web),
			cur:  snap(web, base),
			want: []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.1.5:5353", "10.244.2.6:5353"))},
		},
		{
			name: "every frontend: cluster, external and load-balancer IPs and node addresses, per family",
			old:  snap(),
			cur: snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 30053, ep("10.244.1.5:5353"))),
				withExternal("192.0.2.1", "2001:db8::1"), withLB("198.51.100.1"))),
			want: []Filter{live(keyDNS, "dns",
				aps("10.96.0.10:53", "172.30.0.11:30053", "192.0.2.1:53", "198.51.100.1:53"), aps("10.244.1.5:5353"))},
		},
		{
			name: "dual-stack Service: both families",
			old: snap(svc(keyDNS, addrs("10.96.0.10", "fd00:96::10"), ports(udp("dns", 53, 30053,
				ep("10.244.1.5:5353"), ep("[fd00:244::5]:5353"))), withExternal("2001:db8::1"))),
			cur: snap(svc(keyDNS, addrs("10.96.0.10", "fd00:96::10"), ports(udp("dns", 53, 30053,
				ep("10.244.1.5:5353"))), withExternal("2001:db8::1"))),
			want: []Filter{live(keyDNS, "dns",
				aps("10.96.0.10:53", "172.30.0.11:30053", "[2001:db8::1]:53", "[fd00:96::10]:53"),
				aps("10.244.1.5:5353"))},
		},
		{
			name: "Service deleted: entries DNATed to its endpoints, on every former frontend",
			old: snap(svc(keyDNS, clusterDNS, ports(tcp("dns-tcp", 53, ep("10.244.1.5:5353")),
				udp("dns", 53, 30053, ep("10.244.1.5:5353"), notServing("10.244.2.6:5353"))),
				withExternal("192.0.2.1"))),
			cur: snap(),
			want: []Filter{removed(keyDNS, "dns", aps("10.96.0.10:53", "172.30.0.11:30053", "192.0.2.1:53"),
				aps("10.244.1.5:5353", "10.244.2.6:5353"))},
		},
		{
			name: "Service deleted while it had no endpoint: nothing was DNATed",
			old:  snap(dnsWith()),
			cur:  snap(),
		},
		{
			name: "UDP port removed, TCP port kept",
			old:  snap(base),
			cur:  snap(svc(keyDNS, clusterDNS, ports(tcp("dns-tcp", 53, ep("10.244.1.5:5353"))))),
			want: []Filter{removed(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.1.5:5353", "10.244.2.6:5353"))},
		},
		{
			name: "external IP removed: only entries to it that the proxy DNATed",
			old:  snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 0, ep("10.244.1.5:5353"))), withExternal("192.0.2.1", "192.0.2.2"))),
			cur:  snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 0, ep("10.244.1.5:5353"))), withExternal("192.0.2.2"))),
			want: []Filter{removed(keyDNS, "dns", aps("192.0.2.1:53"), aps("10.244.1.5:5353"))},
		},
		{
			name: "external IP added: entries to it that predate it (not going to an endpoint)",
			old:  snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 0, ep("10.244.1.5:5353"))))),
			cur:  snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 0, ep("10.244.1.5:5353"))), withExternal("192.0.2.1"))),
			want: []Filter{live(keyDNS, "dns", aps("192.0.2.1:53"), aps("10.244.1.5:5353"))},
		},
		{
			name: "NodePort changed: the new one checked, the old one's DNATed entries go",
			old:  snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 30053, ep("10.244.1.5:5353"))))),
			cur:  snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 30054, ep("10.244.1.5:5353"))))),
			want: []Filter{
				live(keyDNS, "dns", aps("172.30.0.11:30054"), aps("10.244.1.5:5353")),
				removed(keyDNS, "dns", aps("172.30.0.11:30053"), aps("10.244.1.5:5353")),
			},
		},
		{
			name: "port renamed: the frontend is still served, only the live filter",
			old:  snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 0, ep("10.244.1.5:5353"))))),
			cur:  snap(svc(keyDNS, clusterDNS, ports(udp("domain", 53, 0, ep("10.244.1.6:5353"))))),
			want: []Filter{live(keyDNS, "domain", aps("10.96.0.10:53"), aps("10.244.1.6:5353"))},
		},
		{
			name: "frontend taken over by an unchanged Service: no removed filter",
			old: snap(svc(keyDNS, clusterDNS, ports(udp("dns", 53, 0, ep("10.244.1.5:5353")))),
				svc(keyDNS2, clusterDNS, ports(udp("dns", 53, 0, ep("10.244.1.5:5353"))))),
			cur:     snap(svc(keyDNS2, clusterDNS, ports(udp("dns", 53, 0, ep("10.244.1.5:5353"))))),
			changed: []servicecache.ServiceKey{keyDNS},
		},
		{
			name: "several Services, sorted by key",
			old:  snap(base, svc(keyWeb, addrs("10.96.0.20"), ports(udp("syslog", 514, 0, ep("10.244.1.7:514"))))),
			cur:  snap(dnsWith(ep("10.244.1.5:5353")), svc(keyWeb, addrs("10.96.0.20"), ports(udp("syslog", 514, 0)))),
			want: []Filter{
				live(keyWeb, "syslog", aps("10.96.0.20:514"), nil),
				live(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.1.5:5353")),
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			changed := tc.changed
			if changed == nil {
				changed = []servicecache.ServiceKey{keyWeb, keyDNS, keyDNS2}
			}
			got := StaleEntries(tc.old, tc.cur, changed, nodeAddrs[:1])
			if !equalFilters(got, tc.want) {
				t.Errorf("StaleEntries:\n%s\nwant\n%s", dumpFilters(got), dumpFilters(tc.want))
			}
		})
	}
}

func equalFilters(a, b []Filter) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Service != y.Service || x.PortName != y.PortName || x.Protocol != y.Protocol || x.Removed != y.Removed ||
			!slices.Equal(x.Frontends, y.Frontends) || !slices.Equal(x.Backends, y.Backends) {
			return false
		}
	}
	return true
}

func dumpFilters(fs []Filter) string {
	if len(fs) == 0 {
		return "  (none)"
	}
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "  %s\n", f)
	}
	return b.String()
}

func TestStaleEntriesNodePortFamilies(t *testing.T) {
	// Node addresses of a family the Service has no cluster IP of are not
	// frontends (the IPVS planner does not serve them either).
	s := svc(keyDNS, addrs("fd00:96::10"), ports(udp("dns", 53, 30053, ep("[fd00:244::5]:5353"))))
	got := StaleEntries(nil, snap(s), []servicecache.ServiceKey{keyDNS}, nodeAddrs)
	want := []Filter{live(keyDNS, "dns", aps("[fd00:30::11]:30053", "[fd00:96::10]:53"), aps("[fd00:244::5]:5353"))}
	if !equalFilters(got, want) {
		t.Errorf("got\n%s\nwant\n%s", dumpFilters(got), dumpFilters(want))
	}
	// No node addresses: no NodePort frontend.
	got = StaleEntries(nil, snap(s), []servicecache.ServiceKey{keyDNS}, nil)
	want = []Filter{live(keyDNS, "dns", aps("[fd00:96::10]:53"), aps("[fd00:244::5]:5353"))}
	if !equalFilters(got, want) {
		t.Errorf("without node addresses: got\n%s\nwant\n%s", dumpFilters(got), dumpFilters(want))
	}
}

func TestChanged(t *testing.T) {
	a := svc(keyDNS, clusterDNS, ports(udp("dns", 53, 0)))
	a2 := svc(keyDNS, clusterDNS, ports(udp("dns", 53, 0, ep("10.244.1.5:53"))))
	b := svc(keyWeb, addrs("10.96.0.20"), ports(tcp("http", 80)))
	c := svc(keyDNS2, addrs("10.96.0.11"), ports(udp("dns", 53, 0)))
	tests := []struct {
		name     string
		old, cur *servicecache.Snapshot
		want     []servicecache.ServiceKey
	}{
		{name: "nil old: everything", old: nil, cur: snap(a, b), want: []servicecache.ServiceKey{keyWeb, keyDNS}},
		{name: "same values: nothing", old: snap(a, b), cur: snap(a, b)},
		{name: "changed, added, deleted", old: snap(a, b), cur: snap(a2, c), want: []servicecache.ServiceKey{keyWeb, keyDNS, keyDNS2}},
		{name: "nil cur: everything old", old: snap(a), cur: nil, want: []servicecache.ServiceKey{keyDNS}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Changed(tc.old, tc.cur); !slices.Equal(got, tc.want) {
				t.Errorf("Changed = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFilterString(t *testing.T) {
	tests := []struct {
		f    Filter
		want string
	}{
		{
			f:    live(keyDNS, "dns", aps("10.96.0.10:53", "172.30.0.11:30053"), aps("10.244.1.5:5353")),
			want: "kube-system/dns:dns conntrack -D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 / --orig-dst 172.30.0.11 --orig-port-dst 30053, except entries with --reply-src 10.244.1.5 --reply-port-src 5353",
		},
		{
			f:    live(keyDNS, "dns", aps("10.96.0.10:53"), nil),
			want: "kube-system/dns:dns conntrack -D -p udp --orig-dst 10.96.0.10 --orig-port-dst 53",
		},
		{
			f:    removed(keyDNS, "dns", aps("[fd00::10]:53"), aps("[fd00:244::5]:5353")),
			want: "kube-system/dns:dns conntrack -D -p udp --orig-dst fd00::10 --orig-port-dst 53, only entries with --reply-src fd00:244::5 --reply-port-src 5353",
		},
	}
	for _, tc := range tests {
		if got := tc.f.String(); got != tc.want {
			t.Errorf("String =\n%s\nwant\n%s", got, tc.want)
		}
	}
}

// entry is a UDP entry from client to dst, DNATed to (replied by) backend.
func entry(client, dst, backend string) Entry {
	return Entry{Protocol: ProtoUDP, OrigSrc: ap(client), OrigDst: ap(dst), ReplySrc: ap(backend), ReplyDst: ap(client)}
}

func TestFakeAppliesFilters(t *testing.T) {
	stale := entry("10.0.0.1:40001", "10.96.0.10:53", "10.244.1.5:5353")
	servingE := entry("10.0.0.1:40002", "10.96.0.10:53", "10.244.2.6:5353")
	noEndpoint := entry("10.0.0.1:40003", "10.96.0.10:53", "10.96.0.10:53")
	otherService := entry("10.0.0.1:40004", "10.96.0.11:53", "10.244.1.5:5353")
	otherPort := entry("10.0.0.1:40005", "10.96.0.10:54", "10.244.1.5:5353")
	tcpEntry := entry("10.0.0.1:40006", "10.96.0.10:53", "10.244.1.5:5353")
	tcpEntry.Protocol = ProtoTCP
	mapped := entry("10.0.0.1:40007", "[::ffff:10.96.0.10]:53", "[::ffff:10.244.1.5]:5353")
	nodePort := entry("10.0.0.1:40008", "172.30.0.11:30053", "10.244.1.5:5353")
	foreignNodePort := entry("10.0.0.1:40009", "192.168.1.1:30053", "192.168.1.1:30053")
	gone := entry("10.0.0.1:40010", "10.96.0.30:53", "10.244.3.5:53")
	goneNotNATed := entry("10.0.0.1:40011", "10.96.0.30:53", "10.96.0.30:53")
	all := []Entry{stale, servingE, noEndpoint, otherService, otherPort, tcpEntry, mapped, nodePort, foreignNodePort, gone, goneNotNATed}

	tests := []struct {
		name    string
		filters []Filter
		deleted []Entry
	}{
		{name: "no filter", deleted: nil},
		{
			name:    "live filter: entries to the frontends not going to a serving endpoint",
			filters: []Filter{live(keyDNS, "dns", aps("10.96.0.10:53", "172.30.0.11:30053"), aps("10.244.2.6:5353"))},
			deleted: []Entry{stale, noEndpoint, mapped, nodePort},
		},
		{
			name:    "removed filter: only the entries DNATed to the former endpoints",
			filters: []Filter{removed(keyDNS, "dns", aps("10.96.0.30:53"), aps("10.244.3.5:53"))},
			deleted: []Entry{gone},
		},
		{
			name: "live filters sharing a frontend keep the union of their endpoints",
			filters: []Filter{
				live(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.2.6:5353")),
				live(keyDNS2, "dns", aps("10.96.0.10:53"), aps("10.244.1.5:5353")),
			},
			deleted: []Entry{noEndpoint},
		},
		{
			name: "a live filter wins over a removed one on the same frontend",
			filters: []Filter{
				removed(keyDNS2, "dns", aps("10.96.0.10:53"), aps("10.244.2.6:5353")),
				live(keyDNS, "dns", aps("10.96.0.10:53"), aps("10.244.2.6:5353")),
			},
			deleted: []Entry{stale, noEndpoint, mapped},
		},
		{
			name:    "other protocols are filtered on their own number",
			filters: []Filter{{Service: keyDNS, PortName: "dns-tcp", Protocol: v1.ProtocolTCP, Frontends: aps("10.96.0.10:53")}},
			deleted: []Entry{tcpEntry},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake(all...)
			n, err := f.DeleteStale(tc.filters)
			if err != nil {
				t.Fatal(err)
			}
			var wantLeft []Entry
			for _, e := range all {
				if !slices.Contains(tc.deleted, e) {
					wantLeft = append(wantLeft, e)
				}
			}
			if left := f.Entries(); !reflect.DeepEqual(left, wantLeft) || n != len(tc.deleted) {
				t.Errorf("deleted %d, left:\n%v\nwant %d deleted, left:\n%v", n, left, len(tc.deleted), wantLeft)
			}
			if calls := f.Calls(); len(tc.filters) > 0 && (len(calls) != 1 || !equalFilters(calls[0], tc.filters)) {
				t.Errorf("calls = %v", calls)
			} else if len(tc.filters) == 0 && len(calls) != 0 {
				t.Errorf("a call without filters was recorded: %v", calls)
			}
		})
	}
}

func TestFakeError(t *testing.T) {
	f := NewFake(entry("10.0.0.1:40001", "10.96.0.10:53", "10.244.1.5:5353"))
	f.SetError(fmt.Errorf("boom"))
	filters := []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), nil)}
	if _, err := f.DeleteStale(filters); err == nil {
		t.Fatal("no error")
	}
	if len(f.Entries()) != 1 {
		t.Error("a failing call deleted entries")
	}
	f.SetError(nil)
	if n, err := f.DeleteStale(filters); err != nil || n != 1 {
		t.Errorf("DeleteStale = %d, %v", n, err)
	}
	if len(f.Calls()) != 2 {
		t.Errorf("calls = %d, want 2", len(f.Calls()))
	}
}

func TestCompileFamilies(t *testing.T) {
	tests := []struct {
		filters      []Filter
		want4, want6 bool
	}{
		{filters: nil},
		{filters: []Filter{live(keyDNS, "dns", aps("10.96.0.10:53"), nil)}, want4: true},
		{filters: []Filter{live(keyDNS, "dns", aps("[fd00::10]:53"), nil)}, want6: true},
		{filters: []Filter{removed(keyDNS, "dns", aps("[::ffff:10.96.0.10]:53", "[fd00::10]:53"), aps("10.244.1.5:53"))}, want4: true, want6: true},
		{filters: []Filter{{Protocol: "ICMP", Frontends: aps("10.96.0.10:53")}}}, // unknown protocol: ignored
	}
	for i, tc := range tests {
		m := compile(tc.filters)
		if m.has4 != tc.want4 || m.has6 != tc.want6 {
			t.Errorf("%d: families v4 %v v6 %v, want %v %v", i, m.has4, m.has6, tc.want4, tc.want6)
		}
	}
}
