package proxy

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// TestNodePortAddressesFromHost checks that NodePort virtual servers and
// the SCTP node-port set entries go on one list: the host's addresses
// matching --nodeport-addresses, not the Node object's.
func TestNodePortAddressesFromHost(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	// The Node reports an address the host does not have (a cloud
	// ExternalIP) and misses one it has.
	n := servicecache.Node{Name: "node1", Addresses: addrs("172.30.0.11", "203.0.113.5", "fd00:30::11")}
	local := addrs("127.0.0.1", "172.30.0.11", "192.168.5.5", "::1", "fd00:30::11", "fe80::1")
	tests := []struct {
		name string
		flag []string
		want []netip.Addr
	}{
		{name: "empty: every host address", want: addrs("172.30.0.11", "192.168.5.5")},
		{name: "primary", flag: []string{"primary"}, want: addrs("172.30.0.11")},
		{name: "cidr", flag: []string{"192.168.0.0/16"}, want: addrs("192.168.5.5")},
		{name: "cidr matching no host address", flag: []string{"203.0.113.0/24"}, want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log := &ipvs.FakeLog{}
			fipvs, links, ipset := ipvs.NewFakeIPVS(log), ipvs.NewFakeLinks(log), iptables.NewFakeIPSet()
			snaps := &snapshots{}
			p := newHostProxier(t, tc.flag, []iptables.Family{iptables.IPv4}, local, snaps, fipvs, links, ipset, Options{})
			svc := &servicecache.Service{
				Key: servicecache.ServiceKey{Namespace: "default", Name: "sctp"}, Type: v1.ServiceTypeNodePort,
				ClusterIPs: addrs("10.96.0.10"),
				Ports: []servicecache.ServicePort{{Name: "s", Protocol: v1.ProtocolSCTP, Port: 80, NodePort: 30080,
					Endpoints: []servicecache.Endpoint{{Addr: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true}}}},
			}
			snap := &servicecache.Snapshot{Services: []*servicecache.Service{svc}, Node: n, Changed: []servicecache.ServiceKey{svc.Key}}
			snaps.queue = []*servicecache.Snapshot{snap}
			if err := p.Sync(context.Background(), true); err != nil {
				t.Fatal(err)
			}
			// Config.Families has no IPv6: neither does IPVS.
			if got := p.NodePortIPs(snap, local); !slices.Equal(got, tc.want) {
				t.Errorf("NodePortIPs = %v, want %v", got, tc.want)
			}
			st, err := ipvs.ReadKernel(fipvs, links)
			if err != nil {
				t.Fatal(err)
			}
			var vsAddrs []netip.Addr
			for _, vs := range st.VirtualServers {
				if vs.Key.Port == 30080 {
					vsAddrs = append(vsAddrs, vs.Key.Addr)
				}
			}
			slices.SortFunc(vsAddrs, netip.Addr.Compare)
			if !slices.Equal(vsAddrs, tc.want) {
				t.Errorf("NodePort virtual servers on %v, want %v", vsAddrs, tc.want)
			}
			var setAddrs []netip.Addr
			if s := ipset.Sets["KUBE-NODE-PORT-SCTP-HASH"]; s != nil {
				for e := range s.Entries {
					if e.Port == 30080 {
						setAddrs = append(setAddrs, e.IP)
					}
				}
			}
			slices.SortFunc(setAddrs, netip.Addr.Compare)
			if !slices.Equal(setAddrs, tc.want) {
				t.Errorf("KUBE-NODE-PORT-SCTP-HASH holds %v, want %v", setAddrs, tc.want)
			}
		})
	}
}

type addrHealth struct {
	addrs []netip.Addr
	all   bool
	calls int
}

func (h *addrHealth) SyncServices(map[servicecache.ServiceKey]uint16) {}
func (h *addrHealth) SyncEndpoints(map[servicecache.ServiceKey]int)   {}
func (h *addrHealth) SetAddresses(addrs []netip.Addr, all bool) {
	h.addrs, h.all = addrs, all
	h.calls++
}

// TestHealthCheckAddresses: the health check node ports are told every
// sync where to listen, from the same --nodeport-addresses resolution as
// the NodePorts.
func TestHealthCheckAddresses(t *testing.T) {
	n := servicecache.Node{Name: "node1", Addresses: []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("fd00:30::11")}}
	local := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("fd00:30::11")}
	v4, dual := []iptables.Family{iptables.IPv4}, []iptables.Family{iptables.IPv4, iptables.IPv6}
	tests := []struct {
		name     string
		flag     []string
		families []iptables.Family
		want     []netip.Addr
		wantAll  bool
	}{
		{name: "empty, dual-stack: all", families: dual, wantAll: true},
		{name: "empty, IPv4 only: 0.0.0.0", families: v4, want: []netip.Addr{netip.IPv4Unspecified()}},
		{name: "primary, dual-stack", flag: []string{"primary"}, families: dual,
			want: []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("fd00:30::11")}},
		{name: "primary, IPv4 only", flag: []string{"primary"}, families: v4, want: []netip.Addr{netip.MustParseAddr("172.30.0.11")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log := &ipvs.FakeLog{}
			h := &addrHealth{}
			snaps := &snapshots{queue: []*servicecache.Snapshot{{Node: n}}}
			p := newHostProxier(t, tc.flag, tc.families, local, snaps, ipvs.NewFakeIPVS(log), ipvs.NewFakeLinks(log),
				iptables.NewFakeIPSet(), Options{ServiceHealth: h})
			if err := p.Sync(context.Background(), true); err != nil {
				t.Fatal(err)
			}
			if h.calls != 1 || h.all != tc.wantAll || !slices.Equal(h.addrs, tc.want) {
				t.Errorf("SetAddresses(%v, %v) after %d calls, want (%v, %v) once", h.addrs, h.all, h.calls, tc.want, tc.wantAll)
			}
		})
	}
}

// newHostProxier is a proxier over the fakes with --nodeport-addresses
// flag, the given families and the host addresses local.
func newHostProxier(t *testing.T, flag []string, families []iptables.Family, local []netip.Addr, snaps *snapshots,
	fipvs *ipvs.FakeIPVS, links *ipvs.FakeLinks, ipset *iptables.FakeIPSet, opts Options) *Proxier {
	t.Helper()
	npa, err := servicecache.ParseNodePortAddresses(flag)
	if err != nil {
		t.Fatal(err)
	}
	tables := map[iptables.Family]iptables.Tables{}
	for _, f := range families {
		tables[f] = iptables.NewFakeTables()
	}
	return New(Config{Families: families, NodePortAddresses: npa},
		snaps, func() ([]netip.Addr, error) { return local, nil }, ipvs.NewApplier(fipvs, links),
		&iptables.Applier{IPSet: ipset, Tables: tables}, &healthRecorder{}, opts)
}
