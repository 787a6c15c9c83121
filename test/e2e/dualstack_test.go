//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// The lab is dual-stack (addresses in labctl's config.go): nodes and pods
// have an IPv4 and an IPv6 address, the API server allocates cluster IPs
// from 10.96.0.0/16 and fd00:10:96::/112, and the proxies run with both
// cluster CIDRs. These cases prove IPv6 single-stack and dual-stack Services
// the way service_test.go proves IPv4 ones: the kernel state (ipvsadm -Sn,
// the KUBE-6-* ipsets, kube-ipvs0) and real connections from every node and
// from a pod.

// familyApp is a Deployment of the echo server behind a NodePort Service of
// chosen IP families.
type familyApp struct {
	ns, name string
	svc      *v1.Service
	// pods maps each of the Service's families to its endpoints: pod IP
	// (canonical form) -> pod name.
	pods map[v1.IPFamily]map[string]string
}

// newFamilyApp deploys the echo app in a fresh namespace behind a Service
// with the given ipFamilyPolicy and ipFamilies, checks that the API server
// allocated cluster IPs of those families in that order, and waits until
// every node has programmed every cluster IP completely. The namespace is
// deleted when the test ends; on failure the lab report is printed.
func newFamilyApp(t *testing.T, ns string, replicas int, policy v1.IPFamilyPolicy, families ...v1.IPFamily) *familyApp {
	t.Helper()
	ctx := context.Background()
	reportOnFailure(t)
	if err := labctl.EnsureNamespace(ctx, cs, ns); err != nil {
		t.Fatalf("step: creating namespace %s: %v", ns, err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	a := &familyApp{ns: ns, name: "echo"}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, labctl.EchoDeployment(ns, a.name, int32(replicas)), metav1.CreateOptions{}); err != nil {
		t.Fatalf("step: creating the echo Deployment: %v", err)
	}
	want := labctl.EchoService(ns, a.name)
	want.Spec.IPFamilyPolicy = ptr.To(policy)
	want.Spec.IPFamilies = families
	svc, err := cs.CoreV1().Services(ns).Create(ctx, want, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating the echo Service (%s %v): %v", policy, families, err)
	}
	a.svc = svc
	if !slices.Equal(svc.Spec.IPFamilies, families) || len(svc.Spec.ClusterIPs) != len(families) {
		t.Fatalf("step: Service %s/%s asked for %s %v, got ipFamilies %v clusterIPs %v", ns, a.name, policy, families, svc.Spec.IPFamilies, svc.Spec.ClusterIPs)
	}
	for i, f := range families {
		ip, err := netip.ParseAddr(svc.Spec.ClusterIPs[i])
		cidr := netip.MustParsePrefix(map[v1.IPFamily]string{v1.IPv4Protocol: labctl.ServiceCIDR, v1.IPv6Protocol: labctl.ServiceCIDR6}[f])
		if err != nil || !cidr.Contains(ip) {
			t.Fatalf("step: Service %s/%s clusterIPs %v: #%d is not an %s address of %s", ns, a.name, svc.Spec.ClusterIPs, i, f, cidr)
		}
	}
	a.waitEndpoints(t, replicas)
	a.waitProgrammed(t)
	return a
}

// waitEndpoints waits until each of the Service's families has n ready
// endpoints, and records the pods behind them (by their status.podIPs).
func (a *familyApp) waitEndpoints(t *testing.T, n int) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(podsReadyTimeout)
	for {
		got, err := a.readyEndpoints(ctx)
		complete := err == nil
		for _, f := range a.svc.Spec.IPFamilies {
			complete = complete && len(got[f]) == n
		}
		if complete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("step: waiting for %d ready endpoints per family %v of %s/%s: have %v (err %v)\n%s",
				n, a.svc.Spec.IPFamilies, a.ns, a.name, got, err, lab.PodReport(ctx, a.ns))
		}
		time.Sleep(500 * time.Millisecond)
	}
	pods, err := cs.CoreV1().Pods(a.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + a.name})
	if err != nil {
		t.Fatalf("step: listing the echo pods: %v", err)
	}
	byIP := map[string]string{}
	for _, p := range pods.Items {
		for _, ip := range p.Status.PodIPs {
			byIP[ip.IP] = p.Name
		}
	}
	eps, _ := a.readyEndpoints(ctx)
	a.pods = map[v1.IPFamily]map[string]string{}
	for _, f := range a.svc.Spec.IPFamilies {
		a.pods[f] = map[string]string{}
		for _, ip := range eps[f] {
			name, ok := byIP[ip]
			if !ok {
				t.Fatalf("step: endpoint %s of %s/%s is no pod's IP (pod IPs %v)", ip, a.ns, a.name, byIP)
			}
			a.pods[f][ip] = name
		}
	}
}

// readyEndpoints lists the ready endpoint addresses of the Service per
// address family, canonical and sorted.
func (a *familyApp) readyEndpoints(ctx context.Context) (map[v1.IPFamily][]string, error) {
	list, err := cs.DiscoveryV1().EndpointSlices(a.ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + a.name})
	if err != nil {
		return nil, err
	}
	out := map[v1.IPFamily][]string{}
	for _, s := range list.Items {
		f := v1.IPFamily(s.AddressType)
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, addr := range e.Addresses {
				if ip, err := netip.ParseAddr(addr); err == nil && !slices.Contains(out[f], ip.String()) {
					out[f] = append(out[f], ip.String())
				}
			}
		}
	}
	for f := range out {
		sort.Strings(out[f])
	}
	return out, nil
}

// clusterIP is the Service's cluster IP of a family.
func (a *familyApp) clusterIP(t *testing.T, f v1.IPFamily) netip.Addr {
	t.Helper()
	for i, fam := range a.svc.Spec.IPFamilies {
		if fam == f {
			return netip.MustParseAddr(a.svc.Spec.ClusterIPs[i])
		}
	}
	t.Fatalf("step: Service %s/%s has no %s cluster IP (%v)", a.ns, a.name, f, a.svc.Spec.ClusterIPs)
	return netip.Addr{}
}

// podIPs are the endpoints of one family, sorted.
func (a *familyApp) podIPs(f v1.IPFamily) []string {
	var ips []string
	for ip := range a.pods[f] {
		ips = append(ips, ip)
	}
	sort.Strings(ips)
	return ips
}

// podNames are the pods behind the Service, sorted.
func (a *familyApp) podNames() []string {
	var names []string
	for _, m := range a.pods {
		for _, n := range m {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	return names
}

func (a *familyApp) nodePort(proto v1.Protocol) uint16 {
	for _, p := range a.svc.Spec.Ports {
		if p.Protocol == proto {
			return uint16(p.NodePort)
		}
	}
	return 0
}

// ipsetName is upstream's name of one of its ipsets for a family: IPv6
// sets carry the KUBE-6- prefix.
func ipsetName(f v1.IPFamily, base string) string {
	if f == v1.IPv6Protocol {
		return strings.Replace(base, "KUBE-", "KUBE-6-", 1)
	}
	return base
}

// waitProgrammed waits until every node programs each cluster IP
// completely: the TCP and UDP virtual servers with the family's ready pods
// and the KUBE-CLUSTER-IP / KUBE-6-CLUSTER-IP entries.
func (a *familyApp) waitProgrammed(t *testing.T) {
	t.Helper()
	for _, f := range a.svc.Spec.IPFamilies {
		cip := a.clusterIP(t, f)
		vip := netip.AddrPortFrom(cip, 80).String()
		waitVS(t, "TCP", vip, a.podIPs(f))
		waitVS(t, "UDP", vip, a.podIPs(f))
		set := ipsetName(f, "KUBE-CLUSTER-IP")
		for _, n := range lab.NodeNames() {
			waitLines(t, n, "ipset list "+set, []string{"ipset", "list", set},
				[]string{cip.String() + ",tcp:80", cip.String() + ",udp:80"}, false)
		}
	}
}

// clusterCIDR is the lab's cluster CIDR of a family (the proxies'
// --cluster-cidr).
func clusterCIDR(f v1.IPFamily) string {
	if f == v1.IPv6Protocol {
		return labctl.ClusterCIDR6
	}
	return labctl.ClusterCIDR
}

// waitNATRule waits until a node's NAT table of the family (iptables-save
// or ip6tables-save) has a rule in chain with every fragment. (Upstream
// writes its iptables rules after the ipset entries they match, in the same
// sync: a rule can lag the entry the test waited for.)
func waitNATRule(t *testing.T, node string, f v1.IPFamily, chain string, fragments ...string) {
	t.Helper()
	cmd := "iptables-save"
	if f == v1.IPv6Protocol {
		cmd = "ip6tables-save"
	}
	deadline := time.Now().Add(propagateTimeout)
	for {
		out := nodeOutput(t, node, cmd, "-t", "nat")
		for _, l := range strings.Split(out, "\n") {
			if !strings.HasPrefix(l, "-A "+chain+" ") {
				continue
			}
			all := true
			for _, frag := range fragments {
				all = all && strings.Contains(l, frag)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("step: %s: %s -t nat has no rule in %s with %q after %s:\n%s", node, cmd, chain, fragments, propagateTimeout, out)
		}
		time.Sleep(time.Second)
	}
}

// requireClusterIPServes checks one cluster IP end to end: every node's
// `ipvsadm -Sn` has its TCP and UDP virtual servers with the family's pods
// as Masq real servers, it is bound to kube-ipvs0 and listed in the
// family's KUBE-CLUSTER-IP set, traffic to it from outside the family's
// cluster CIDR is masqueraded, and TCP and UDP requests from every node and
// from a pod are answered by every pod. A pod's requests reach other pods
// with the pod's own address as the source (inside the cluster CIDR: not
// masqueraded) and reach the pod itself masqueraded (hairpin, through
// KUBE-LOOP-BACK).
func (a *familyApp) requireClusterIPServes(t *testing.T, f v1.IPFamily) {
	t.Helper()
	cip := a.clusterIP(t, f)
	vip := netip.AddrPortFrom(cip, 80).String()
	bits := cip.BitLen()
	set := ipsetName(f, "KUBE-CLUSTER-IP")
	for _, n := range lab.NodeNames() {
		waitNATRule(t, n, f, "KUBE-SERVICES", "--match-set "+set+" dst,dst", "-j KUBE-MARK-MASQ", "! -s "+clusterCIDR(f))
		waitNATRule(t, n, f, "KUBE-POSTROUTING", "--match-set "+ipsetName(f, "KUBE-LOOP-BACK")+" dst,dst,src", "-j MASQUERADE")
		var want []string
		for _, flag := range []string{"-t", "-u"} {
			want = append(want, fmt.Sprintf("-A %s %s -s rr", flag, vip))
			for _, ip := range a.podIPs(f) {
				want = append(want, fmt.Sprintf("-a %s %s -r %s -m -w 1", flag, vip, netip.AddrPortFrom(netip.MustParseAddr(ip), 8080)))
			}
		}
		requireLines(t, fmt.Sprintf("step: %s cluster IP %s: %s: ipvsadm -Sn", f, cip, n), nodeOutput(t, n, "ipvsadm", "-Sn"), want, false)
		requireLines(t, fmt.Sprintf("step: %s cluster IP %s: %s: ipset list %s", f, cip, n, set), nodeOutput(t, n, "ipset", "list", set),
			[]string{cip.String() + ",tcp:80", cip.String() + ",udp:80"}, false)
		if addrs := nodeOutput(t, n, "ip", "-o", "addr", "show", "dev", "kube-ipvs0"); !strings.Contains(addrs, fmt.Sprintf(" %s/%d ", cip, bits)) {
			t.Fatalf("step: %s cluster IP %s: %s: not bound to kube-ipvs0:\n%s", f, cip, n, addrs)
		}
	}
	for _, n := range lab.NodeNames() {
		for _, proto := range []string{"tcp", "udp"} {
			answers := request(t, n, proto, vip, 3*len(a.pods[f]))
			requireAnsweredBy(t, fmt.Sprintf("step: %s %s -> %s ClusterIP %s", n, proto, f, vip), answers, a.podNames())
		}
	}
	// From a pod: the pod's own node does the load balancing.
	pod, podIP := a.podNames()[0], ""
	for ip, name := range a.pods[f] {
		if name == pod {
			podIP = ip
		}
	}
	for _, proto := range []string{"tcp", "udp"} {
		answers := request(t, "pod/"+a.ns+"/"+pod, proto, vip, 3*len(a.pods[f]))
		what := fmt.Sprintf("step: pod %s (%s) %s -> %s ClusterIP %s", pod, podIP, proto, f, vip)
		requireAnsweredBy(t, what, answers, a.podNames())
		for _, ans := range answers {
			src, err := netip.ParseAddrPort(ans.client)
			switch {
			case err != nil:
				t.Fatalf("%s: %s answered with client %q, not an address", what, ans.pod, ans.client)
			case ans.pod != pod && src.Addr().String() != podIP:
				t.Fatalf("%s: %s saw the client as %s, want the pod's own %s (traffic from the cluster CIDR %s is not masqueraded)", what, ans.pod, src, podIP, clusterCIDR(f))
			case ans.pod == pod && src.Addr().String() == podIP:
				t.Fatalf("%s: the pod reached itself with its own address %s as the source: hairpin traffic is not masqueraded", what, src)
			}
		}
	}
}

// An IPv6 single-stack Service reaches every backend over TCP and UDP from
// every node and from a pod. Kernel: the [IPv6]:80 virtual servers with the
// pods' IPv6 addresses as real servers, the cluster IP on kube-ipvs0 (/128)
// and in KUBE-6-CLUSTER-IP.
func TestIPv6SingleStackService(t *testing.T) {
	app := newFamilyApp(t, "e2e-ipv6", 3, v1.IPFamilyPolicySingleStack, v1.IPv6Protocol)
	for ip := range app.pods[v1.IPv6Protocol] {
		if !netip.MustParseAddr(ip).Is6() {
			t.Fatalf("step: endpoint %s of an IPv6 Service is not IPv6", ip)
		}
	}
	app.requireClusterIPServes(t, v1.IPv6Protocol)
}

// A dual-stack Service, in both family orders, reaches every backend through
// both of its cluster IPs: the IPv4 one with the pods' IPv4 addresses as
// real servers, the IPv6 one with their IPv6 addresses.
func TestDualStackService(t *testing.T) {
	for _, tc := range []struct {
		name     string
		policy   v1.IPFamilyPolicy
		families []v1.IPFamily
	}{
		{name: "IPv4 first", policy: v1.IPFamilyPolicyRequireDualStack, families: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}},
		{name: "IPv6 first", policy: v1.IPFamilyPolicyPreferDualStack, families: []v1.IPFamily{v1.IPv6Protocol, v1.IPv4Protocol}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := "e2e-dual-" + strings.ToLower(strings.ReplaceAll(tc.name, " ", "-"))
			app := newFamilyApp(t, ns, 2, tc.policy, tc.families...)
			for _, f := range tc.families {
				app.requireClusterIPServes(t, f)
			}
		})
	}
}

// The NodePort of a dual-stack Service is served on every node's IPv6
// address (and still on its IPv4 one), from every node, over TCP and UDP.
// Kernel: a virtual server per node IPv6 address and NodePort with the pods'
// IPv6 addresses, the port in KUBE-6-NODE-PORT-TCP/UDP.
func TestDualStackNodePortOnIPv6(t *testing.T) {
	app := newFamilyApp(t, "e2e-dual-nodeport", 2, v1.IPFamilyPolicyPreferDualStack, v1.IPv4Protocol, v1.IPv6Protocol)
	ctx := context.Background()
	for i, n := range lab.NodeNames() {
		for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
			for _, f := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
				addr := labctl.NodeAddr(i + 1)
				if f == v1.IPv6Protocol {
					addr = labctl.NodeAddr6(i + 1)
				}
				vs := netip.AddrPortFrom(addr, app.nodePort(proto)).String()
				if err := lab.WaitIPVSRealServers(ctx, n, string(proto), vs, app.podIPs(f), propagateTimeout); err != nil {
					t.Fatalf("step: %s NodePort virtual server %s on %s: %v", f, vs, n, err)
				}
			}
			set := ipsetName(v1.IPv6Protocol, "KUBE-NODE-PORT-"+string(proto))
			waitLines(t, n, "ipset list "+set, []string{"ipset", "list", set}, []string{fmt.Sprint(app.nodePort(proto))}, false)
			waitNATRule(t, n, v1.IPv6Protocol, "KUBE-NODE-PORT", "--match-set "+set+" dst", "-j KUBE-MARK-MASQ")
		}
	}
	for _, from := range lab.NodeNames() {
		for i := range lab.NodeNames() {
			for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP} {
				for _, addr := range labctl.NodeAddrs(i + 1) {
					vs := netip.AddrPortFrom(addr, app.nodePort(proto)).String()
					answers := request(t, from, strings.ToLower(string(proto)), vs, 3*len(app.podNames()))
					requireAnsweredBy(t, fmt.Sprintf("step: %s %s -> NodePort %s", from, proto, vs), answers, app.podNames())
				}
			}
		}
	}
}
