package servicecache

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func nodeAddrs(ss ...string) []netip.Addr {
	out := []netip.Addr{}
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestParseNodePortAddresses(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    NodePortAddresses
		wantErr string
	}{
		{name: "empty", in: nil, want: NodePortAddresses{}},
		{name: "blank entries", in: []string{"", " "}, want: NodePortAddresses{}},
		{name: "cidrs masked", in: []string{"10.0.0.5/8", " fd00::1/64"},
			want: NodePortAddresses{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/64")}}},
		{name: "primary", in: []string{"primary"}, want: NodePortAddresses{Primary: true}},
		{name: "all", in: []string{"all"},
			want: NodePortAddresses{Prefixes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}},
		{name: "localhost", in: []string{"localhost"},
			want: NodePortAddresses{Prefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}},
		{name: "primary and cidr", in: []string{"192.168.1.0/24", "primary"},
			want: NodePortAddresses{Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}, Primary: true}},
		{name: "bare ip", in: []string{"10.0.0.1"}, wantErr: `"10.0.0.1" must be a valid CIDR`},
		{name: "unknown keyword", in: []string{"Primary"}, wantErr: `"Primary" must be a valid CIDR`},
		{name: "duplicate keyword", in: []string{"primary", "primary"}, wantErr: "given twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNodePortAddresses(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseNodePortAddresses = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestNodePortIPs(t *testing.T) {
	// The lab's node: its address and an IPv6 one on eth0, loopback; the
	// caller has already left kube-ipvs0's addresses out.
	lab := nodeAddrs("127.0.0.1", "172.30.0.11", "::1", "fd00:30::11", "fe80::1")
	labPrimary := nodeAddrs("172.30.0.11", "fd00:30::11")
	multi := nodeAddrs("10.0.0.10", "192.168.1.10", "192.168.1.11", "169.254.3.3", "2001:db8::10", "fd00::10", "fe80::2")
	multiPrimary := nodeAddrs("192.168.1.10", "fd00::10")
	tests := []struct {
		name    string
		flag    []string
		primary []netip.Addr
		local   []netip.Addr
		want    []netip.Addr
	}{
		{name: "empty: every local address but loopback and ipv6 link-local", local: lab, primary: labPrimary,
			want: nodeAddrs("172.30.0.11", "fd00:30::11")},
		// As upstream's matchAll path: IPv4 link-local stays.
		{name: "empty keeps ipv4 link-local", local: multi,
			want: nodeAddrs("10.0.0.10", "169.254.3.3", "192.168.1.10", "192.168.1.11", "2001:db8::10", "fd00::10")},
		{name: "all", flag: []string{"all"}, local: lab, want: nodeAddrs("172.30.0.11", "fd00:30::11")},
		{name: "no local addresses", flag: []string{"primary"}, primary: labPrimary, local: nil, want: nil},
		{name: "primary", flag: []string{"primary"}, primary: multiPrimary, local: multi,
			want: nodeAddrs("192.168.1.10", "fd00::10")},
		{name: "primary not on the host", flag: []string{"primary"}, primary: nodeAddrs("203.0.113.5", "fd00::10"), local: multi,
			want: nodeAddrs("fd00::10")},
		// As kube-proxy: "primary" on a single-stack node gives no IPv6
		// prefix, so the IPv6 family matches all of its addresses.
		{name: "primary single stack: other family matches all", flag: []string{"primary"}, primary: nodeAddrs("192.168.1.10"), local: multi,
			want: nodeAddrs("192.168.1.10", "2001:db8::10", "fd00::10")},
		{name: "loopback primary: no prefix for that family", flag: []string{"primary", "fd00::/64"}, primary: nodeAddrs("127.0.0.1", "fd00::10"), local: multi,
			want: nodeAddrs("10.0.0.10", "169.254.3.3", "192.168.1.10", "192.168.1.11", "fd00::10")},
		{name: "ipv4 cidr, ipv6 all", flag: []string{"192.168.1.0/24"}, local: multi,
			want: nodeAddrs("192.168.1.10", "192.168.1.11", "2001:db8::10", "fd00::10")},
		{name: "cidr of each family", flag: []string{"192.168.1.0/24", "2001:db8::/32"}, local: multi,
			want: nodeAddrs("192.168.1.10", "192.168.1.11", "2001:db8::10")},
		{name: "cidr matching nothing", flag: []string{"172.16.0.0/12", "2001:db8:ffff::/48"}, local: multi, want: nil},
		{name: "primary plus cidr", flag: []string{"primary", "10.0.0.0/8"}, primary: multiPrimary, local: multi,
			want: nodeAddrs("10.0.0.10", "192.168.1.10", "fd00::10")},
		{name: "zero-length prefix wins over others", flag: []string{"10.0.0.0/8", "0.0.0.0/0", "fd00::/8"}, local: multi,
			want: nodeAddrs("10.0.0.10", "169.254.3.3", "192.168.1.10", "192.168.1.11", "fd00::10")},
		{name: "explicit ipv6 link-local cidr", flag: []string{"fe80::/10", "10.0.0.0/8"}, local: multi,
			want: nodeAddrs("10.0.0.10", "fe80::2")},
		{name: "localhost: loopback never serves", flag: []string{"localhost"}, local: lab, want: nil},
		{name: "duplicates and mapped dropped", local: nodeAddrs("10.0.0.1", "10.0.0.1", "::ffff:10.0.0.1"), want: nodeAddrs("10.0.0.1")},
		{name: "mapped ipv4 is ipv4", flag: []string{"10.0.0.0/8"}, local: nodeAddrs("::ffff:10.0.0.1"), want: nodeAddrs("10.0.0.1")},
		{name: "invalid skipped", local: []netip.Addr{{}, netip.MustParseAddr("10.0.0.1")}, want: nodeAddrs("10.0.0.1")},
		{name: "zone dropped", flag: []string{"fe80::/10"}, local: nodeAddrs("fe80::1%eth0"), want: nodeAddrs("fe80::1")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ParseNodePortAddresses(tc.flag)
			if err != nil {
				t.Fatal(err)
			}
			got := spec.NodePortIPs(tc.primary, tc.local)
			if len(got) == 0 && len(tc.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("NodePortIPs = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestExpandPrimary(t *testing.T) {
	spec := NodePortAddresses{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Primary: true}
	got := spec.Expand(nodeAddrs("::ffff:192.168.1.10", "::1"))
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.10/32")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Expand = %v, want %v", got, want)
	}
	if len(spec.Prefixes) != 1 {
		t.Errorf("Expand changed the receiver's Prefixes: %v", spec.Prefixes)
	}
}

func TestNodeAddressOrder(t *testing.T) {
	tests := []struct {
		name        string
		status      []v1.NodeAddress
		want        []netip.Addr
		wantPrimary []netip.Addr
	}{
		{name: "internal before external, status order kept", status: []v1.NodeAddress{
			{Type: v1.NodeHostName, Address: "node-a"},
			{Type: v1.NodeExternalIP, Address: "203.0.113.5"},
			{Type: v1.NodeInternalIP, Address: "10.0.0.9"},
			{Type: v1.NodeInternalIP, Address: "10.0.0.2"},
			{Type: v1.NodeExternalIP, Address: "2001:db8::5"},
			{Type: v1.NodeInternalIP, Address: "10.0.0.9"},
			{Type: v1.NodeInternalIP, Address: "not-an-ip"},
		}, want: nodeAddrs("10.0.0.9", "10.0.0.2", "203.0.113.5", "2001:db8::5"),
			wantPrimary: nodeAddrs("10.0.0.9", "2001:db8::5")},
		// A cloud node whose ExternalIP sorts below its InternalIP: the
		// InternalIP stays the primary.
		{name: "external sorting first", status: []v1.NodeAddress{
			{Type: v1.NodeExternalIP, Address: "3.120.0.7"},
			{Type: v1.NodeInternalIP, Address: "172.31.5.9"},
		}, want: nodeAddrs("172.31.5.9", "3.120.0.7"), wantPrimary: nodeAddrs("172.31.5.9")},
		// An IPv4-internal, IPv6-external node: upstream picks the
		// external IPv6 as that family's primary.
		{name: "family only external", status: []v1.NodeAddress{
			{Type: v1.NodeExternalIP, Address: "2001:db8::5"},
			{Type: v1.NodeInternalIP, Address: "10.0.0.9"},
		}, want: nodeAddrs("10.0.0.9", "2001:db8::5"), wantPrimary: nodeAddrs("10.0.0.9", "2001:db8::5")},
		{name: "v6 first", status: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: "fd00::9"},
			{Type: v1.NodeInternalIP, Address: "10.0.0.9"},
		}, want: nodeAddrs("fd00::9", "10.0.0.9"), wantPrimary: nodeAddrs("fd00::9", "10.0.0.9")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, _ := ConvertNode(&v1.Node{Status: v1.NodeStatus{Addresses: tc.status}})
			if !reflect.DeepEqual(n.Addresses, tc.want) {
				t.Errorf("Addresses = %v, want %v", n.Addresses, tc.want)
			}
			if got := n.PrimaryIPs(); !reflect.DeepEqual(got, tc.wantPrimary) {
				t.Errorf("PrimaryIPs = %v, want %v", got, tc.wantPrimary)
			}
			if got := (NodePortAddresses{Primary: true}).NodePortIPs(n.PrimaryIPs(), n.Addresses); !containsAll(got, tc.wantPrimary) {
				t.Errorf("--nodeport-addresses=primary resolves to %v, want it to hold %v", got, tc.wantPrimary)
			}
		})
	}
}

func containsAll(have, want []netip.Addr) bool {
	for _, a := range want {
		if !slices.Contains(have, a) {
			return false
		}
	}
	return true
}

func TestHealthCheckAddrs(t *testing.T) {
	local := nodeAddrs("127.0.0.1", "10.0.0.10", "192.168.1.10", "::1", "fd00::10", "fe80::2")
	primary := nodeAddrs("192.168.1.10", "fd00::10")
	tests := []struct {
		name    string
		flag    []string
		primary []netip.Addr
		want    []netip.Addr
		wantAll bool
	}{
		{name: "empty: all", wantAll: true},
		{name: "all keyword", flag: []string{"all"}, wantAll: true},
		{name: "zero prefixes", flag: []string{"0.0.0.0/0", "::/0"}, wantAll: true},
		{name: "primary dual-stack", flag: []string{"primary"}, primary: primary, want: nodeAddrs("192.168.1.10", "fd00::10")},
		{name: "primary single-stack: ipv6 all", flag: []string{"primary"}, primary: nodeAddrs("192.168.1.10"),
			want: nodeAddrs("::", "192.168.1.10")},
		{name: "ipv4 cidr: ipv6 all", flag: []string{"10.0.0.0/8"}, want: nodeAddrs("::", "10.0.0.10")},
		{name: "ipv6 zero, ipv4 cidr", flag: []string{"::/0", "192.168.0.0/16"}, want: nodeAddrs("::", "192.168.1.10")},
		{name: "ipv4 all, ipv6 cidr", flag: []string{"fd00::/8"}, want: nodeAddrs("0.0.0.0", "fd00::10")},
		{name: "matching nothing: no address", flag: []string{"172.16.0.0/12", "2001:db8::/32"}, want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ParseNodePortAddresses(tc.flag)
			if err != nil {
				t.Fatal(err)
			}
			got, all := spec.HealthCheckAddrs(tc.primary, local)
			if all != tc.wantAll || !slices.Equal(got, tc.want) {
				t.Errorf("HealthCheckAddrs = %v, %v; want %v, %v", got, all, tc.want, tc.wantAll)
			}
		})
	}
}
