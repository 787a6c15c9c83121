package iptables

import (
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
	v1 "k8s.io/api/core/v1"
)

// kernelOutFilter is KUBE-IPVS-OUT-FILTER as `iptables -S` and `ip6tables
// -S` print it once the rules of an IPv4 and an IPv6 load-balancer IP whose
// source ranges exclude the node are in place: libxt_ipvs prints --vaddr
// with xtables_ipmask_to_numeric / xtables_ip6mask_to_numeric, which leave
// out a full mask, unlike -s. (The IPv4 lines are what the e2e lab's kernel
// printed; the host running the unit tests has no IPVS, hence no xt_ipvs to
// round-trip them through.)
const kernelOutFilterV4 = `-N KUBE-IPVS-OUT-FILTER
-A KUBE-IPVS-OUT-FILTER -s 192.0.2.20/32 -m ipvs --vproto 6 --vaddr 192.0.2.20 --vport 80 -j DROP
-A KUBE-IPVS-OUT-FILTER -s 192.0.2.20/32 -m ipvs --vproto 17 --vaddr 192.0.2.20 --vport 80 -j DROP
`

const kernelOutFilterV6 = `-N KUBE-IPVS-OUT-FILTER
-A KUBE-IPVS-OUT-FILTER -s 2001:db8::20/128 -m ipvs --vproto 6 --vaddr 2001:db8::20 --vport 80 -j DROP
-A KUBE-IPVS-OUT-FILTER -s 2001:db8::20/128 -m ipvs --vproto 17 --vaddr 2001:db8::20 --vport 80 -j DROP
`

// The planned KUBE-IPVS-OUT-FILTER is exactly what the kernel lists back,
// so an applier that finds it in place rewrites nothing: a plan in another
// form (--vaddr with /32) made every sync rewrite the chain with
// iptables-restore for as long as such a load balancer existed.
func TestOutFilterAsTheKernelListsIt(t *testing.T) {
	snap := &servicecache.Snapshot{
		Node: servicecache.Node{Name: "node-a", Addresses: ips("172.30.0.12", "fd00:172:30::12")},
		Services: []*servicecache.Service{{
			Key: svcKey("lb"), ClusterIPs: ips("10.96.0.20", "fd00:96::20"),
			LoadBalancerIPs:          ips("192.0.2.20", "2001:db8::20"),
			LoadBalancerSourceRanges: pfxs("172.30.0.1/32", "fd00:172:30::1/128"),
			Ports: []servicecache.ServicePort{
				{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80},
				{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80},
			},
		}},
	}
	cfg := Config{Families: []Family{IPv4, IPv6}, ClusterCIDRs: pfxs("10.244.0.0/16", "fd00:10:244::/56"),
		LocalAddresses: ips("172.30.0.12", "fd00:172:30::12"), NodePortIPs: ips("172.30.0.12", "fd00:172:30::12")}
	d := Plan(snap, cfg)
	if len(d.Problems) > 0 {
		t.Fatalf("problems: %q", d.Problems)
	}

	fake := map[Family]*FakeTables{IPv4: NewFakeTables(), IPv6: NewFakeTables()}
	a := &Applier{IPSet: NewFakeIPSet(), Tables: map[Family]Tables{IPv4: fake[IPv4], IPv6: fake[IPv6]}}
	if _, err := a.Apply(d); err != nil {
		t.Fatalf("first apply: %v", err)
	}
	for _, p := range d.Families {
		text := kernelOutFilterV4
		if p.Family == IPv6 {
			text = kernelOutFilterV6
		}
		listed, err := parseTableListing(strings.Split(strings.TrimSpace(text), "\n"), func(string) bool { return true })
		if err != nil {
			t.Fatal(err)
		}
		planned := p.Chain(TableFilter, chainIPVSOutFilter)
		if planned == nil || !rulesEqual(planned.Rules, listed[chainIPVSOutFilter]) {
			var got []string
			if planned != nil {
				for _, r := range planned.Rules {
					got = append(got, formatRule(chainIPVSOutFilter, r))
				}
			}
			t.Fatalf("%v: planned KUBE-IPVS-OUT-FILTER\n%s\nwant what the kernel lists:\n%s", p.Family, strings.Join(got, "\n"), text)
		}
		// The kernel's listing in place of the applied one: nothing to do.
		fake[p.Family].Chains[TableFilter][chainIPVSOutFilter] = listed[chainIPVSOutFilter]
	}
	ch, err := a.Apply(Plan(snap, cfg))
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if !ch.Empty() {
		t.Fatalf("applying the same plan over the kernel's listing changed %+v, want nothing", ch)
	}
}
