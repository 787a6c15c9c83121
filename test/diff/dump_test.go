package diff

import (
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func TestNormalizeIPVS(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			name: "sorted by virtual server, its own line first, real servers sorted",
			in: `
-a -t 10.96.0.10:53 -r 10.244.2.5:53 -m -w 1
-A -u 10.96.0.10:53 -s rr
-A -t 10.96.0.10:53 -s rr -p 10800
-a -t 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1
-A --sctp-service [fd00:10:96::5]:80 -s rr
-a --sctp-service [fd00:10:96::5]:80 -r [fd00:10:244:1::5]:8000 -m -w 0`,
			want: []string{
				"-A --sctp-service [fd00:10:96::5]:80 -s rr",
				"-a --sctp-service [fd00:10:96::5]:80 -r [fd00:10:244:1::5]:8000 -m -w 0",
				"-A -t 10.96.0.10:53 -s rr -p 10800",
				"-a -t 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1",
				"-a -t 10.96.0.10:53 -r 10.244.2.5:53 -m -w 1",
				"-A -u 10.96.0.10:53 -s rr",
			},
		},
		{name: "empty", in: "", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NormalizeIPVS(lines(tt.in), nil)
			if len(got) == 0 && len(tt.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestAnnotator(t *testing.T) {
	local := v1.ServiceInternalTrafficPolicyLocal
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.0.20", "fd00:10:96::20"},
			ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal, InternalTrafficPolicy: &local,
			ExternalIPs: []string{"192.0.2.7"},
			Ports:       []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080}},
		},
		Status: v1.ServiceStatus{LoadBalancer: v1.LoadBalancerStatus{Ingress: []v1.LoadBalancerIngress{{IP: "198.51.100.9"}}}},
	}
	n1, n2 := "node1", "node2"
	f := false
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.2"}, NodeName: &n1},
			{Addresses: []string{"10.244.1.3"}, NodeName: &n1, Conditions: discoveryv1.EndpointConditions{Ready: &f}},
			{Addresses: []string{"10.244.2.2"}, NodeName: &n2},
		},
	}
	a := NewAnnotator("node1", []*v1.Service{svc}, []*discoveryv1.EndpointSlice{es})
	tests := []struct{ flag, addr, want string }{
		{"-t", "10.96.0.20:80", "svc=web/http kind=cluster etp=Local itp=Local local=1"},
		{"-t", "[fd00:10:96::20]:80", "svc=web/http kind=cluster etp=Local itp=Local local=0"},
		{"-t", "192.0.2.7:80", "svc=web/http kind=external etp=Local itp=Local local=1"},
		{"-t", "198.51.100.9:80", "svc=web/http kind=lb etp=Local itp=Local local=1 src=unset"},
		{"-t", "172.30.0.11:30080", "svc=web/http kind=nodeport etp=Local itp=Local local=1"},
		{"-u", "10.96.0.20:80", ""},
		{"-t", "10.96.0.1:443", ""},
	}
	for _, tt := range tests {
		if got := a.Tag(tt.flag, tt.addr); got != tt.want {
			t.Errorf("Tag(%s %s) = %q, want %q", tt.flag, tt.addr, got, tt.want)
		}
	}
	for member, want := range map[string]string{
		"198.51.100.9,tcp:80":                  "svc=web/http kind=lb etp=Local itp=Local local=1 src=unset",
		"fd00:10:96::20,tcp:80,fd00:10:96::20": "svc=web/http kind=cluster etp=Local itp=Local local=0",
		"30080":                                "",
		"10.96.0.20,udp:80":                    "",
	} {
		if got := a.IPSetTag(member); got != want {
			t.Errorf("IPSetTag(%s) = %q, want %q", member, got, want)
		}
	}
	if got := NormalizeIPSet([]string{"add KUBE-CLUSTER-IP 10.96.0.20,tcp:80", "add KUBE-X"}, a); !reflect.DeepEqual(got, []string{
		"add KUBE-CLUSTER-IP 10.96.0.20,tcp:80 # svc=web/http kind=cluster etp=Local itp=Local local=1", "add KUBE-X"}) {
		t.Errorf("NormalizeIPSet with tags: %q", got)
	}
	got := NormalizeIPVS([]string{"-a -t 10.96.0.20:80 -r 10.244.1.2:8000 -m -w 1"}, a)
	if want := "-a -t 10.96.0.20:80 -r 10.244.1.2:8000 -m -w 1 # svc=web/http kind=cluster etp=Local itp=Local local=1"; got[0] != want {
		t.Errorf("got %q, want %q", got[0], want)
	}
}

func TestNormalizeIPSet(t *testing.T) {
	in := `
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5bd1a8f2
add KUBE-CLUSTER-IP 10.96.0.10,udp:53
add KUBE-CLUSTER-IP 10.96.0.1,tcp:443
create OTHER-SET hash:ip family inet hashsize 1024 maxelem 65536 initval 0x1
add OTHER-SET 1.2.3.4
create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536 initval 0x2
create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536 initval 0x3`
	want := []string{
		"create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536",
		"create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12",
		"add KUBE-CLUSTER-IP 10.96.0.1,tcp:443",
		"add KUBE-CLUSTER-IP 10.96.0.10,udp:53",
		"create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536",
	}
	if got := NormalizeIPSet(lines(in), nil); !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNormalizeIptables(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{
			name: "KUBE chains sorted, rules in order, jumps from built-ins kept, counters and comment text gone",
			in: `
# Generated by iptables-save v1.8.9 on Tue Dec  8 00:00:00 2026
*nat
:PREROUTING ACCEPT [12:720]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:DOCKER - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j DOCKER
-A OUTPUT -m comment --comment kubernetes-service-portals -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A DOCKER -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
COMMIT`,
			want: []string{
				"*filter :FORWARD DROP",
				"*nat :KUBE-POSTROUTING -",
				"*nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
				"*nat -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
				"*nat :KUBE-SERVICES -",
				"*nat -A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
				"*nat :OUTPUT ACCEPT",
				"*nat -A OUTPUT -m comment -j KUBE-SERVICES",
				"*nat :POSTROUTING ACCEPT",
				"*nat -A POSTROUTING -m comment -j KUBE-POSTROUTING",
				"*nat :PREROUTING ACCEPT",
				"*nat -A PREROUTING -m comment -j KUBE-SERVICES",
			},
		},
		{name: "no KUBE chains", in: "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NormalizeIptables(lines(tt.in))
			if len(got) == 0 && len(tt.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestNormalizeAddr(t *testing.T) {
	in := `
7: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN mode DEFAULT group default \    link/ether 5e:1c:aa:00:11:22 brd ff:ff:ff:ff:ff:ff
7: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\       valid_lft forever preferred_lft forever
7: kube-ipvs0    inet 10.96.0.1/32 scope global kube-ipvs0\       valid_lft forever preferred_lft forever
7: kube-ipvs0    inet6 fd00:10:96::1/128 scope global \       valid_lft forever preferred_lft forever`
	want := []string{
		"link kube-ipvs0 <BROADCAST,NOARP> state DOWN mtu 1500",
		"addr 10.96.0.1/32 scope global",
		"addr 10.96.0.10/32 scope global",
		"addr fd00:10:96::1/128 scope global",
	}
	if got := NormalizeAddr(lines(in)); !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNormalizeWholeDump(t *testing.T) {
	raw := `### ipvs
-A -t 10.96.0.1:443 -s rr
### ipvs-timeouts
Timeout (tcp tcpfin udp): 900 120 300
### ipset
### iptables
### ip6tables
### xtables-backend
iptables-legacy-save 0
iptables-nft-save 7
### addr
### sysctl
net.ipv4.vs.conntrack = 1
net.bridge.bridge-nf-call-iptables = absent
`
	d := Normalize(raw, nil)
	want := Dump{
		"ipvs":            {"-A -t 10.96.0.1:443 -s rr"},
		"ipvs-timeouts":   {"Timeout (tcp tcpfin udp): 900 120 300"},
		"xtables-backend": {"iptables-legacy-save empty", "iptables-nft-save has KUBE-* chains"},
		"sysctl":          {"net.bridge.bridge-nf-call-iptables = absent", "net.ipv4.vs.conntrack = 1"},
	}
	for _, s := range Sections {
		if len(d[s]) == 0 && len(want[s]) == 0 {
			continue
		}
		if !reflect.DeepEqual(d[s], want[s]) {
			t.Errorf("section %s: got %q, want %q", s, d[s], want[s])
		}
	}
	// A saved dump reads back as it was.
	back := SplitSections(d.String())
	for _, s := range Sections {
		if len(back[s])+len(d[s]) > 0 && !reflect.DeepEqual(back[s], d[s]) {
			t.Errorf("section %s after String: %q, want %q", s, back[s], d[s])
		}
	}
	// The script prints every section header, so that an empty section is
	// told apart from a missing one.
	for _, s := range Sections {
		if !strings.Contains(DumpScript(), "'### "+s+"'") {
			t.Errorf("DumpScript prints no section %s", s)
		}
	}
}

func TestSourceRangesTag(t *testing.T) {
	tests := []struct {
		ranges []string
		v4, v6 string
	}{
		{nil, "unset", "unset"},
		{[]string{"10.0.0.0/8"}, "some", "none"},
		{[]string{" 203.0.113.0/24 ", "fd00::/8"}, "some", "some"},
		{[]string{"0.0.0.0/0", "10.0.0.0/8"}, "open", "none"},
		{[]string{"::/0"}, "none", "open"},
	}
	for _, tt := range tests {
		if v4, v6 := sourceRanges(tt.ranges, false), sourceRanges(tt.ranges, true); v4 != tt.v4 || v6 != tt.v6 {
			t.Errorf("%q: %s/%s, want %s/%s", tt.ranges, v4, v6, tt.v4, tt.v6)
		}
	}
}
