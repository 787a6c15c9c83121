package app

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

func TestNotLocal(t *testing.T) {
	node := servicecache.Node{Name: "n", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}}
	tests := []struct {
		name string
		o    Options
		want map[iptables.Family][]string
	}{
		{"cluster-cidr (default)", Options{}, nil},
		{"cluster-cidr", Options{DetectLocalMode: "ClusterCIDR"}, nil},
		{"node-cidr", Options{DetectLocalMode: "NodeCIDR"}, map[iptables.Family][]string{
			iptables.IPv4: {"!", "-s", "10.244.1.0/24"}, iptables.IPv6: {"!", "-s", "fd00:10:244:1::/64"}}},
		{"bridge", Options{DetectLocalMode: "BridgeInterface", PodBridgeInterface: "cbr0"}, map[iptables.Family][]string{
			iptables.IPv4: {"!", "-i", "cbr0"}, iptables.IPv6: {"!", "-i", "cbr0"}}},
		{"prefix", Options{DetectLocalMode: "InterfaceNamePrefix", PodInterfaceNamePrefix: "veth"}, map[iptables.Family][]string{
			iptables.IPv4: {"!", "-i", "veth+"}, iptables.IPv6: {"!", "-i", "veth+"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.o.NotLocal(node); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("NotLocal = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestValidateDetectLocalMode(t *testing.T) {
	for _, tt := range []struct {
		mode, bridge, prefix string
		ok                   bool
	}{
		{"", "", "", true},
		{"NodeCIDR", "", "", true},
		{"BridgeInterface", "", "", false},
		{"BridgeInterface", "cbr0", "", true},
		{"InterfaceNamePrefix", "", "", false},
		{"InterfaceNamePrefix", "", "veth", true},
		{"Bogus", "", "", false},
	} {
		o := NewOptions()
		o.DetectLocalMode, o.PodBridgeInterface, o.PodInterfaceNamePrefix = tt.mode, tt.bridge, tt.prefix
		if err := o.Validate(); (err == nil) != tt.ok {
			t.Errorf("mode %q bridge %q prefix %q: Validate() = %v, want ok=%v", tt.mode, tt.bridge, tt.prefix, err, tt.ok)
		}
	}
}
