package servicecache_test

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/fuzzgen"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// FuzzConvertAndMerge feeds random Services, EndpointSlices and Nodes to
// ConvertService, MergeEndpointSlices and ConvertNode and checks that what
// comes out is what the planners are promised (CheckService, CheckNode),
// that the API objects are left alone and that the merge depends neither on
// the order of the slices nor on slices of other Services.
//
//	go test -run='^$' -fuzz=FuzzConvertAndMerge -fuzztime=3m -parallel=1 ./pkg/servicecache/
func FuzzConvertAndMerge(f *testing.F) {
	for _, seed := range fuzzgen.Seeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sc := fuzzgen.Generate(data)
		nodeBefore := sc.Node.DeepCopy()
		node, _ := servicecache.ConvertNode(sc.Node)
		if err := CheckNode(node); err != nil {
			t.Fatalf("ConvertNode(%+v): %v", sc.Node, err)
		}
		if !reflect.DeepEqual(nodeBefore, sc.Node) {
			t.Fatal("ConvertNode modified the Node")
		}

		slicesBefore := make([]*discovery.EndpointSlice, len(sc.Slices))
		for i, s := range sc.Slices {
			slicesBefore[i] = s.DeepCopy()
		}
		reversed := slices.Clone(sc.Slices)
		slices.Reverse(reversed)
		for _, obj := range sc.Services {
			before := obj.DeepCopy()
			svc, skip, notes := servicecache.ConvertService(obj)
			if !reflect.DeepEqual(before, obj) {
				t.Fatalf("ConvertService modified the Service")
			}
			if (svc == nil) == (skip == "") {
				t.Fatalf("ConvertService(%s/%s) = %v, skip %q: want exactly one of them", obj.Namespace, obj.Name, svc != nil, skip)
			}
			if svc == nil {
				continue
			}
			if err := CheckService(svc); err != nil {
				t.Fatalf("ConvertService: %v\n%s\nnotes: %q", err, svc.Dump(), notes)
			}
			if err := checkConverted(obj, svc); err != nil {
				t.Fatalf("ConvertService: %v\n%s", err, svc.Dump())
			}
			for _, p := range svc.Ports {
				if p.Endpoints != nil {
					t.Fatalf("ConvertService: port %q has endpoints", p.Name)
				}
			}
			converted := *svc
			converted.Ports = slices.Clone(svc.Ports)

			merged, _ := servicecache.MergeEndpointSlices(svc, sc.Slices)
			if err := CheckService(merged); err != nil {
				t.Fatalf("MergeEndpointSlices: %v\n%s", err, merged.Dump())
			}
			if !svc.Equal(&converted) {
				t.Fatal("MergeEndpointSlices modified its Service")
			}
			for i := range sc.Slices {
				if !reflect.DeepEqual(slicesBefore[i], sc.Slices[i]) {
					t.Fatalf("MergeEndpointSlices modified EndpointSlice %s", sc.Slices[i].Name)
				}
			}
			if !samePortsButEndpoints(svc, merged) {
				t.Fatalf("MergeEndpointSlices changed more than endpoints:\n%s\nwas\n%s", merged.Dump(), svc.Dump())
			}
			if again, _ := servicecache.MergeEndpointSlices(svc, reversed); !again.Equal(merged) {
				t.Fatalf("MergeEndpointSlices depends on the slice order:\n%s\nreversed:\n%s", merged.Dump(), again.Dump())
			}
			var own []*discovery.EndpointSlice
			for _, s := range sc.Slices {
				if s.Namespace == obj.Namespace && s.Labels[discovery.LabelServiceName] == obj.Name {
					own = append(own, s)
				}
			}
			if again, _ := servicecache.MergeEndpointSlices(svc, own); !again.Equal(merged) {
				t.Fatalf("other Services' slices changed the merge:\n%s\nown only:\n%s", merged.Dump(), again.Dump())
			}
			if again, _ := servicecache.MergeEndpointSlices(merged, sc.Slices); !again.Equal(merged) {
				t.Fatalf("merging twice differs:\n%s\nthen:\n%s", merged.Dump(), again.Dump())
			}
			if built, _, _ := servicecache.BuildService(obj, sc.Slices); !built.Equal(merged) {
				t.Fatalf("BuildService differs from ConvertService + MergeEndpointSlices")
			}
		}
		if err := CheckSnapshot(sc.Snapshot()); err != nil {
			t.Fatal(err)
		}
	})
}

// validAddr is an address the planners can use as it is: specified, no
// zone, not IPv4-mapped (the service cache unmaps them).
func validAddr(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("invalid address")
	case a.IsUnspecified():
		return fmt.Errorf("unspecified address %s", a)
	case a.Zone() != "":
		return fmt.Errorf("address %s has a zone", a)
	case a.Is4In6():
		return fmt.Errorf("address %s is IPv4-mapped", a)
	}
	return nil
}

// validPrefix is a masked prefix of a valid address without a zone, not
// IPv4-mapped.
func validPrefix(p netip.Prefix) error {
	if a := p.Addr(); !p.IsValid() || a.Zone() != "" || a.Is4In6() || p != p.Masked() {
		return fmt.Errorf("prefix %s not valid and masked", p)
	}
	return nil
}

func sortedUnique[T any](xs []T, compare func(a, b T) int) bool {
	for i := 1; i < len(xs); i++ {
		if compare(xs[i-1], xs[i]) >= 0 {
			return false
		}
	}
	return true
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// CheckService checks what the planners rely on in a converted (and
// possibly merged) Service: valid addresses, one cluster IP per family,
// external and load-balancer IPs of those families, sorted and
// deduplicated lists, ports unique by name and protocol with non-zero
// numbers, endpoints of the Service's families with non-zero ports, unique
// per port.
func CheckService(svc *servicecache.Service) error {
	if svc == nil {
		return fmt.Errorf("nil Service")
	}
	errf := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s", svc.Key, fmt.Sprintf(format, args...))
	}
	if n := len(svc.ClusterIPs); n == 0 || n > 2 {
		return errf("%d cluster IPs", n)
	}
	var has4, has6 bool
	for _, a := range svc.ClusterIPs {
		if err := validAddr(a); err != nil {
			return errf("cluster IP: %v", err)
		}
		if (a.Is4() && has4) || (a.Is6() && has6) {
			return errf("two cluster IPs of one family: %v", svc.ClusterIPs)
		}
		has4, has6 = has4 || a.Is4(), has6 || a.Is6()
	}
	hasFamily := func(a netip.Addr) bool { return (a.Is4() && has4) || (a.Is6() && has6) }
	for what, list := range map[string][]netip.Addr{"external IPs": svc.ExternalIPs, "load-balancer IPs": svc.LoadBalancerIPs} {
		if !sortedUnique(list, netip.Addr.Compare) {
			return errf("%s not sorted and unique: %v", what, list)
		}
		for _, a := range list {
			if err := validAddr(a); err != nil {
				return errf("%s: %v", what, err)
			}
			if !hasFamily(a) {
				return errf("%s: %s has no cluster IP of its family", what, a)
			}
		}
	}
	if !sortedUnique(svc.LoadBalancerSourceRanges, comparePrefixes) {
		return errf("source ranges not sorted and unique: %v", svc.LoadBalancerSourceRanges)
	}
	for _, p := range svc.LoadBalancerSourceRanges {
		if err := validPrefix(p); err != nil {
			return errf("source range: %v", err)
		}
	}
	if svc.AffinityTimeoutSeconds < 0 {
		return errf("affinity timeout %d", svc.AffinityTimeoutSeconds)
	}
	for k := range svc.Annotations {
		if !strings.HasPrefix(k, servicecache.AnnotationPrefix) {
			return errf("annotation %q copied", k)
		}
	}
	for i, p := range svc.Ports {
		if p.Port == 0 {
			return errf("port %q: port 0", p.Name)
		}
		if p.Protocol == "" {
			return errf("port %q: empty protocol", p.Name)
		}
		if i > 0 {
			q := svc.Ports[i-1]
			if c := cmp.Or(cmp.Compare(q.Name, p.Name), cmp.Compare(q.Protocol, p.Protocol)); c >= 0 {
				return errf("ports %q/%s and %q/%s not sorted and unique", q.Name, q.Protocol, p.Name, p.Protocol)
			}
		}
		for j, ep := range p.Endpoints {
			if err := validAddr(ep.Addr); err != nil {
				return errf("port %q endpoint: %v", p.Name, err)
			}
			if !hasFamily(ep.Addr) {
				return errf("port %q endpoint %s: no cluster IP of its family", p.Name, ep.Addr)
			}
			if ep.Port == 0 {
				return errf("port %q endpoint %s: port 0", p.Name, ep.Addr)
			}
			if j > 0 {
				q := p.Endpoints[j-1]
				if c := cmp.Or(q.Addr.Compare(ep.Addr), cmp.Compare(q.Port, ep.Port)); c >= 0 {
					return errf("port %q endpoints %s:%d and %s:%d not sorted and unique", p.Name, q.Addr, q.Port, ep.Addr, ep.Port)
				}
			}
			for _, hints := range [][]string{ep.ZoneHints, ep.NodeHints} {
				if !sortedUnique(hints, strings.Compare) || slices.Contains(hints, "") {
					return errf("port %q endpoint %s: hints %q not sorted, unique and non-empty", p.Name, ep.Addr, hints)
				}
			}
		}
	}
	return nil
}

// checkConverted checks what ConvertService took from obj.
func checkConverted(obj *v1.Service, svc *servicecache.Service) error {
	if svc.Key != (servicecache.ServiceKey{Namespace: obj.Namespace, Name: obj.Name}) || svc.UID != obj.UID || svc.Type != obj.Spec.Type {
		return fmt.Errorf("key, UID or type not copied")
	}
	if _, other := obj.Labels[servicecache.LabelServiceProxyName]; other || obj.Spec.Type == v1.ServiceTypeExternalName {
		return fmt.Errorf("a Service of another proxy or an ExternalName one was converted")
	}
	withNodePorts := obj.Spec.Type == v1.ServiceTypeNodePort || obj.Spec.Type == v1.ServiceTypeLoadBalancer
	for _, p := range svc.Ports {
		if p.NodePort != 0 && !withNodePorts {
			return fmt.Errorf("port %q: node port %d on a %q Service", p.Name, p.NodePort, obj.Spec.Type)
		}
	}
	if (svc.AffinityTimeoutSeconds > 0) != (obj.Spec.SessionAffinity == v1.ServiceAffinityClientIP) {
		return fmt.Errorf("affinity timeout %d with sessionAffinity %q", svc.AffinityTimeoutSeconds, obj.Spec.SessionAffinity)
	}
	if svc.HealthCheckNodePort != 0 && (obj.Spec.Type != v1.ServiceTypeLoadBalancer || !svc.ExternalPolicyLocal) {
		return fmt.Errorf("health check node port %d on a %q Service with Local %v", svc.HealthCheckNodePort, obj.Spec.Type, svc.ExternalPolicyLocal)
	}
	return nil
}

// samePortsButEndpoints reports whether a and b differ at most in their
// ports' endpoints.
func samePortsButEndpoints(a, b *servicecache.Service) bool {
	x, y := *a, *b
	x.Ports, y.Ports = nil, nil
	if !x.Equal(&y) || len(a.Ports) != len(b.Ports) {
		return false
	}
	for i := range a.Ports {
		p, q := a.Ports[i], b.Ports[i]
		p.Endpoints, q.Endpoints = nil, nil
		if !p.Equal(q) {
			return false
		}
	}
	return true
}

// TestUnspecifiedAddressesDropped: 0.0.0.0 and :: are dropped wherever an
// address is read. FuzzIptablesPlan found a Service with clusterIP "::"
// whose KUBE-6-IPVS-IPS and KUBE-6-CLUSTER-IP entries the kernel refuses
// (the netlink applier then also leaves out every entry after them, for
// every Service, and each sync fails); the IPVS planner already ignored
// such addresses.
func TestUnspecifiedAddressesDropped(t *testing.T) {
	obj := &v1.Service{Spec: v1.ServiceSpec{
		ClusterIPs:  []string{"0.0.0.0", "fd00:96::1"},
		Type:        v1.ServiceTypeLoadBalancer,
		Ports:       []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}},
		ExternalIPs: []string{"::", "fd00:1::1"},
	}}
	obj.Namespace, obj.Name = "ns", "svc"
	obj.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "::"}, {IP: "::ffff:0.0.0.0"}}
	svc, skip, notes := servicecache.ConvertService(obj)
	if svc == nil {
		t.Fatalf("skipped: %s", skip)
	}
	if got := fmt.Sprint(svc.ClusterIPs, svc.ExternalIPs, svc.LoadBalancerIPs); got != "[fd00:96::1] [fd00:1::1] []" {
		t.Errorf("cluster, external, load-balancer IPs = %s, want [fd00:96::1] [fd00:1::1] []", got)
	}
	if n := len(slices.DeleteFunc(slices.Clone(notes), func(n string) bool { return !strings.Contains(n, "unspecified address") })); n != 4 {
		t.Errorf("%d notes about unspecified addresses, want 4: %q", n, notes)
	}

	obj.Spec.ClusterIPs = []string{"::"}
	if svc, skip, _ := servicecache.ConvertService(obj); svc != nil || !strings.Contains(skip, "no valid cluster IP") {
		t.Errorf("Service with clusterIP :: converted (skip %q)", skip)
	}

	obj.Spec.ClusterIPs = []string{"fd00:96::1"}
	svc, _, _ = servicecache.ConvertService(obj)
	name, proto, port := "http", v1.ProtocolTCP, int32(8080)
	slice := &discovery.EndpointSlice{AddressType: discovery.AddressTypeIPv6,
		Ports:     []discovery.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		Endpoints: []discovery.Endpoint{{Addresses: []string{"::"}}, {Addresses: []string{"fd00:244::1"}}}}
	slice.Namespace, slice.Name, slice.Labels = "ns", "svc-1", map[string]string{discovery.LabelServiceName: "svc"}
	merged, _ := servicecache.MergeEndpointSlices(svc, []*discovery.EndpointSlice{slice})
	if eps := merged.Ports[0].Endpoints; len(eps) != 1 || eps[0].Addr != netip.MustParseAddr("fd00:244::1") {
		t.Errorf("endpoints %+v, want only fd00:244::1", eps)
	}

	node := &v1.Node{Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "0.0.0.0"}, {Type: v1.NodeInternalIP, Address: "192.168.1.10"}}}}
	if n, _ := servicecache.ConvertNode(node); !slices.Equal(n.Addresses, []netip.Addr{netip.MustParseAddr("192.168.1.10")}) {
		t.Errorf("node addresses %v, want [192.168.1.10]", n.Addresses)
	}
}

// CheckNode checks a converted Node: valid, unique addresses (in the
// Node's order, which names its primary IPs) and valid, masked pod CIDRs.
func CheckNode(n servicecache.Node) error {
	sorted := slices.Clone(n.Addresses)
	slices.SortFunc(sorted, netip.Addr.Compare)
	if len(slices.Compact(sorted)) != len(n.Addresses) {
		return fmt.Errorf("node addresses not unique: %v", n.Addresses)
	}
	for _, a := range n.Addresses {
		if err := validAddr(a); err != nil {
			return fmt.Errorf("node address: %v", err)
		}
	}
	for _, p := range n.PodCIDRs {
		if err := validPrefix(p); err != nil {
			return fmt.Errorf("pod CIDR: %v", err)
		}
	}
	return nil
}

// CheckSnapshot checks every Service of snap and that they are sorted by
// key, unique, and found by Snapshot.Service.
func CheckSnapshot(snap *servicecache.Snapshot) error {
	if err := CheckNode(snap.Node); err != nil {
		return err
	}
	for i, svc := range snap.Services {
		if err := CheckService(svc); err != nil {
			return err
		}
		if i > 0 && !snap.Services[i-1].Key.Less(svc.Key) {
			return fmt.Errorf("Services %s and %s not sorted and unique", snap.Services[i-1].Key, svc.Key)
		}
		if snap.Service(svc.Key) != svc {
			return fmt.Errorf("Snapshot.Service(%s) does not find it", svc.Key)
		}
	}
	return nil
}

// TestSeedsCoverFeatures checks that the seed corpus of the fuzz tests
// (which also runs as a unit test) reaches every feature the generator
// can produce, so that a change of the generator cannot silently make the
// seeds trivial.
func TestSeedsCoverFeatures(t *testing.T) {
	seen := map[string]int{}
	for _, seed := range fuzzgen.Seeds() {
		sc := fuzzgen.Generate(seed)
		for _, obj := range sc.Services {
			if _, skip, _ := servicecache.ConvertService(obj); skip != "" {
				seen["skipped Service"]++
			}
		}
		snap := sc.Snapshot()
		if snap.Node.Name != "" {
			seen["named node"]++
		}
		for _, svc := range snap.Services {
			feature := func(name string, ok bool) {
				if ok {
					seen[name]++
				}
			}
			feature("dual-stack Service", len(svc.ClusterIPs) == 2)
			feature("IPv6 primary", svc.ClusterIPs[0].Is6())
			feature("external IPs", len(svc.ExternalIPs) > 0)
			feature("load-balancer IPs", len(svc.LoadBalancerIPs) > 0)
			feature("source ranges", len(svc.LoadBalancerSourceRanges) > 0)
			feature("session affinity", svc.AffinityTimeoutSeconds > 0)
			feature("externalTrafficPolicy Local", svc.ExternalPolicyLocal)
			feature("internalTrafficPolicy Local", svc.InternalPolicyLocal)
			feature("health check node port", svc.HealthCheckNodePort != 0)
			feature("trafficDistribution", svc.TrafficDistribution != "")
			feature("scheduler annotation", svc.Annotations[fuzzgen.AnnotationScheduler] != "")
			feature("flags annotation", svc.Annotations[fuzzgen.AnnotationSchedFlags] != "")
			for _, p := range svc.Ports {
				feature("node port", p.NodePort != 0)
				feature("unknown protocol", p.Protocol != v1.ProtocolTCP && p.Protocol != v1.ProtocolUDP && p.Protocol != v1.ProtocolSCTP)
				feature("SCTP", p.Protocol == v1.ProtocolSCTP)
				feature("UDP", p.Protocol == v1.ProtocolUDP)
				feature("port with endpoints", len(p.Endpoints) > 0)
				for _, ep := range p.Endpoints {
					feature("IPv6 endpoint", ep.Addr.Is6())
					feature("ready endpoint", ep.Ready)
					feature("serving terminating endpoint", !ep.Ready && ep.Serving && ep.Terminating)
					feature("endpoint on this node", ep.NodeName == fuzzgen.NodeName)
					feature("zone hints", len(ep.ZoneHints) > 0)
					feature("node hints", len(ep.NodeHints) > 0)
				}
			}
		}
	}
	want := []string{"skipped Service", "named node", "dual-stack Service", "IPv6 primary", "external IPs",
		"load-balancer IPs", "source ranges", "session affinity", "externalTrafficPolicy Local",
		"internalTrafficPolicy Local", "health check node port", "trafficDistribution", "scheduler annotation",
		"flags annotation", "node port", "unknown protocol", "SCTP", "UDP", "port with endpoints", "IPv6 endpoint",
		"ready endpoint", "serving terminating endpoint", "endpoint on this node", "zone hints", "node hints"}
	for _, w := range want {
		if seen[w] == 0 {
			t.Errorf("no seed produces: %s", w)
		}
	}
	t.Logf("features over %d seeds: %v", len(fuzzgen.Seeds()), seen)
}
