package app

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestNodeName(t *testing.T) {
	host := func(name string, err error) func() (string, error) {
		return func() (string, error) { return name, err }
	}
	tests := []struct {
		name     string
		override string
		env      string
		hostname func() (string, error)
		want     string
		wantErr  string
	}{
		{name: "override wins", override: "Node-A", env: "node-b", hostname: host("node-c", nil), want: "node-a"},
		{name: "override trimmed", override: " node-a\n", hostname: host("x", nil), want: "node-a"},
		{name: "blank override", override: "  ", env: "node-b", hostname: host("x", nil), wantErr: "--hostname-override"},
		{name: "env next", env: "NODE-B", hostname: host("node-c", nil), want: "node-b"},
		{name: "blank env ignored", env: " ", hostname: host("Node-C", nil), want: "node-c"},
		{name: "hostname last", hostname: host("Node-C.Example.Com", nil), want: "node-c.example.com"},
		{name: "hostname error", hostname: host("", errors.New("uts namespace gone")), wantErr: "uts namespace gone"},
		{name: "empty hostname", hostname: host("", nil), wantErr: "hostname is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nodeName(tc.override, tc.env, tc.hostname)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("nodeName = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestOptionsNodeName(t *testing.T) {
	t.Setenv(NodeNameEnv, "From-Env")
	if got, err := (&Options{}).NodeName(); err != nil || got != "from-env" {
		t.Errorf("NodeName = %q, %v; want from-env", got, err)
	}
	if got, err := (&Options{HostnameOverride: "Flag"}).NodeName(); err != nil || got != "flag" {
		t.Errorf("NodeName = %q, %v; want flag", got, err)
	}
}

func addrs(ss ...string) []netip.Addr {
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

func TestResolveNodePortAddresses(t *testing.T) {
	// Primary first in each family, as NodeAddresses orders them.
	node := addrs("192.168.1.10", "10.0.0.10", "fd00::10", "192.168.1.11", "2001:db8::10")
	tests := []struct {
		name      string
		flag      []string
		nodeAddrs []netip.Addr
		want      []netip.Addr
	}{
		{name: "empty means all", flag: nil, nodeAddrs: node, want: node},
		{name: "no node addresses", flag: []string{"primary"}, nodeAddrs: nil, want: nil},
		{name: "ipv4 cidr", flag: []string{"192.168.1.0/24"}, nodeAddrs: node, want: addrs("192.168.1.10", "192.168.1.11")},
		{name: "ipv6 cidr", flag: []string{"2001:db8::/32"}, nodeAddrs: node, want: addrs("2001:db8::10")},
		{name: "cidr matching nothing", flag: []string{"172.16.0.0/12"}, nodeAddrs: node, want: nil},
		{name: "primary", flag: []string{"primary"}, nodeAddrs: node, want: addrs("192.168.1.10", "fd00::10")},
		{name: "primary single stack", flag: []string{"primary"}, nodeAddrs: addrs("10.0.0.1", "10.0.0.2"), want: addrs("10.0.0.1")},
		{name: "primary plus cidr", flag: []string{"primary", "10.0.0.0/8"}, nodeAddrs: node,
			want: addrs("192.168.1.10", "10.0.0.10", "fd00::10")},
		{name: "all", flag: []string{"all"}, nodeAddrs: node, want: node},
		{name: "localhost matches only loopback", flag: []string{"localhost"}, nodeAddrs: addrs("10.0.0.1", "127.0.0.1"), want: addrs("127.0.0.1")},
		{name: "loopback primary yields nothing for that family", flag: []string{"primary"},
			nodeAddrs: addrs("127.0.0.1", "10.0.0.1", "fd00::1"), want: addrs("fd00::1")},
		{name: "duplicates dropped", flag: nil, nodeAddrs: addrs("10.0.0.1", "10.0.0.1", "::ffff:10.0.0.1"), want: addrs("10.0.0.1")},
		{name: "mapped ipv4 is ipv4", flag: []string{"10.0.0.0/8"}, nodeAddrs: addrs("::ffff:10.0.0.1"), want: addrs("10.0.0.1")},
		{name: "invalid skipped", flag: nil, nodeAddrs: []netip.Addr{{}, netip.MustParseAddr("10.0.0.1")}, want: addrs("10.0.0.1")},
		{name: "zone dropped", flag: []string{"fe80::/10"}, nodeAddrs: addrs("fe80::1%eth0"), want: addrs("fe80::1")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ParseNodePortAddresses(tc.flag)
			if err != nil {
				t.Fatal(err)
			}
			got := ResolveNodePortAddresses(spec, tc.nodeAddrs)
			if len(got) == 0 && len(tc.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ResolveNodePortAddresses = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNodeAddresses(t *testing.T) {
	tests := []struct {
		name string
		node *v1.Node
		want []netip.Addr
	}{
		{name: "nil node", node: nil, want: nil},
		{name: "internal before external, status order kept", node: &v1.Node{Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
			{Type: v1.NodeHostName, Address: "node-a"},
			{Type: v1.NodeExternalIP, Address: "203.0.113.5"},
			{Type: v1.NodeInternalIP, Address: "10.0.0.9"},
			{Type: v1.NodeInternalIP, Address: "10.0.0.2"},
			{Type: v1.NodeExternalIP, Address: "2001:db8::5"},
			{Type: v1.NodeInternalIP, Address: "10.0.0.9"},
			{Type: v1.NodeInternalIP, Address: "not-an-ip"},
		}}}, want: addrs("10.0.0.9", "10.0.0.2", "203.0.113.5", "2001:db8::5")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := NodeAddresses(tc.node); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("NodeAddresses = %v, want %v", got, tc.want)
			}
		})
	}

	// "primary" of an IPv4-internal, IPv6-external node: upstream picks the
	// external IPv6 as that family's primary.
	node := &v1.Node{Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
		{Type: v1.NodeExternalIP, Address: "2001:db8::5"},
		{Type: v1.NodeInternalIP, Address: "10.0.0.9"},
	}}}
	got := ResolveNodePortAddresses(NodePortAddresses{Primary: true}, NodeAddresses(node))
	if want := addrs("10.0.0.9", "2001:db8::5"); !reflect.DeepEqual(got, want) {
		t.Errorf("primary of mixed node = %v, want %v", got, want)
	}
}
