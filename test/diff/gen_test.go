package diff

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestGenerateIsDeterministic(t *testing.T) {
	for seed := range uint64(20) {
		a, b := Generate(NewRand(seed), "ns", 5, 20), Generate(NewRand(seed), "ns", 5, 20)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("seed %d: two states from the same seed differ", seed)
		}
		oa, ob := GenerateOptions(NewRand(seed)), GenerateOptions(NewRand(seed))
		if oa != ob {
			t.Fatalf("seed %d: options %v and %v", seed, oa, ob)
		}
	}
	if reflect.DeepEqual(Generate(NewRand(1), "ns", 5, 20), Generate(NewRand(2), "ns", 5, 20)) {
		t.Fatal("seeds 1 and 2 give the same state")
	}
}

// TestGeneratedObjectsAreValid checks the rules of the API server's
// validation that the generator could break (the lab's API server is the
// final judge; this catches a generator bug on the host).
func TestGeneratedObjectsAreValid(t *testing.T) {
	for seed := range uint64(300) {
		st := Generate(NewRand(seed), "diff-1", 5, 20)
		if n := len(st.Services); n < 5 || n > 20 {
			t.Errorf("seed %d: %d Services", seed, n)
		}
		for _, svc := range st.Services {
			for _, err := range validateService(svc) {
				t.Errorf("seed %d: Service %s: %s", seed, svc.Name, err)
			}
		}
		for _, es := range st.Slices {
			for _, err := range validateSlice(es) {
				t.Errorf("seed %d: EndpointSlice %s: %s", seed, es.Name, err)
			}
		}
	}
}

func validateService(svc *v1.Service) []string {
	var errs []string
	bad := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	sp := svc.Spec
	if e := validation.IsDNS1035Label(svc.Name); len(e) > 0 {
		bad("name: %v", e)
	}
	external := sp.Type == v1.ServiceTypeNodePort || sp.Type == v1.ServiceTypeLoadBalancer
	if sp.Type == v1.ServiceTypeExternalName {
		if sp.ExternalName == "" || sp.IPFamilyPolicy != nil || len(sp.IPFamilies) > 0 {
			bad("ExternalName with families or without a name")
		}
	} else {
		switch {
		case sp.IPFamilyPolicy == nil:
			bad("no ipFamilyPolicy")
		case *sp.IPFamilyPolicy == v1.IPFamilyPolicySingleStack && len(sp.IPFamilies) != 1:
			bad("SingleStack with %v", sp.IPFamilies)
		case *sp.IPFamilyPolicy == v1.IPFamilyPolicyRequireDualStack && len(sp.IPFamilies) != 2:
			bad("RequireDualStack with %v", sp.IPFamilies)
		case len(sp.IPFamilies) == 2 && sp.IPFamilies[0] == sp.IPFamilies[1]:
			bad("ipFamilies %v", sp.IPFamilies)
		}
	}
	if len(sp.Ports) == 0 {
		bad("no ports")
	}
	seen := map[string]bool{}
	for _, p := range sp.Ports {
		if len(sp.Ports) > 1 && len(validation.IsDNS1123Label(p.Name)) > 0 {
			bad("port name %q", p.Name)
		}
		if len(validation.IsValidPortNum(int(p.Port))) > 0 {
			bad("port %d", p.Port)
		}
		key := fmt.Sprint(p.Protocol, p.Port)
		if seen[key] || seen[p.Name] {
			bad("port %s or name %s twice", key, p.Name)
		}
		seen[key], seen[p.Name] = true, true
		if p.Protocol != v1.ProtocolTCP && p.Protocol != v1.ProtocolUDP && p.Protocol != v1.ProtocolSCTP {
			bad("protocol %q", p.Protocol)
		}
		if p.NodePort != 0 {
			bad("a node port chosen by hand")
		}
	}
	if sp.ExternalTrafficPolicy != "" && !external {
		bad("externalTrafficPolicy on %s", sp.Type)
	}
	if external && sp.ExternalTrafficPolicy == "" {
		bad("no externalTrafficPolicy on %s", sp.Type)
	}
	if len(sp.LoadBalancerSourceRanges) > 0 && sp.Type != v1.ServiceTypeLoadBalancer {
		bad("loadBalancerSourceRanges on %s", sp.Type)
	}
	for _, r := range sp.LoadBalancerSourceRanges {
		if _, err := netip.ParsePrefix(strings.TrimSpace(r)); err != nil {
			bad("source range %q: %v", r, err)
		}
	}
	if sp.AllocateLoadBalancerNodePorts != nil && sp.Type != v1.ServiceTypeLoadBalancer {
		bad("allocateLoadBalancerNodePorts on %s", sp.Type)
	}
	if sp.ClusterIP == v1.ClusterIPNone && (sp.SessionAffinity == v1.ServiceAffinityClientIP || len(sp.ExternalIPs) > 0 || sp.Type != v1.ServiceTypeClusterIP) {
		bad("headless with affinity, external IPs or type %s", sp.Type)
	}
	if sp.SessionAffinity == v1.ServiceAffinityClientIP {
		c := sp.SessionAffinityConfig
		if c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil || *c.ClientIP.TimeoutSeconds < 1 || *c.ClientIP.TimeoutSeconds > 86400 {
			bad("ClientIP affinity timeout")
		}
	}
	for _, ip := range sp.ExternalIPs {
		a, err := netip.ParseAddr(ip)
		if err != nil || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsUnspecified() || a.String() != ip {
			bad("external IP %q", ip)
		}
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(ing.IP); err != nil || a.String() != ing.IP {
			bad("ingress IP %q", ing.IP)
		}
		if ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP && *ing.IPMode != v1.LoadBalancerIPModeProxy {
			bad("ipMode %q", *ing.IPMode)
		}
	}
	if len(svc.Status.LoadBalancer.Ingress) > 0 && sp.Type != v1.ServiceTypeLoadBalancer {
		bad("ingress on %s", sp.Type)
	}
	return errs
}

func validateSlice(es *discoveryv1.EndpointSlice) []string {
	var errs []string
	bad := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if len(validation.IsDNS1123Subdomain(es.Name)) > 0 {
		bad("name %q", es.Name)
	}
	if es.Labels[discoveryv1.LabelServiceName] == "" || es.Labels[discoveryv1.LabelManagedBy] == "endpointslice-controller.k8s.io" {
		bad("labels %v", es.Labels)
	}
	if len(es.Endpoints) > 1000 || len(es.Ports) > 100 {
		bad("too many endpoints or ports")
	}
	for _, e := range es.Endpoints {
		if len(e.Addresses) != 1 {
			bad("addresses %v", e.Addresses)
			continue
		}
		a, err := netip.ParseAddr(e.Addresses[0])
		if err != nil || a.String() != e.Addresses[0] || a.Is6() != (es.AddressType == discoveryv1.AddressTypeIPv6) {
			bad("address %q in a %s slice", e.Addresses[0], es.AddressType)
		}
		if e.Hints != nil {
			zones := map[string]bool{}
			for _, z := range e.Hints.ForZones {
				if zones[z.Name] {
					bad("hint for zone %s twice", z.Name)
				}
				zones[z.Name] = true
			}
		}
	}
	for _, p := range es.Ports {
		if p.Name == nil || p.Port == nil || p.Protocol == nil || len(validation.IsValidPortNum(int(*p.Port))) > 0 {
			bad("port %+v", p)
		}
	}
	return errs
}

// TestGeneratorCoverage checks that 100 seeds reach every feature the
// comparison is meant to exercise.
func TestGeneratorCoverage(t *testing.T) {
	count := map[string]int{}
	for seed := range uint64(100) {
		st := Generate(NewRand(seed), "ns", 5, 20)
		if st.NodeZones["node1"] == "" || st.NodeZones["node2"] == "" {
			t.Fatalf("seed %d: node zones %v", seed, st.NodeZones)
		}
		for _, svc := range st.Services {
			sp := svc.Spec
			count["type "+string(sp.Type)]++
			if sp.ClusterIP == v1.ClusterIPNone {
				count["headless"]++
			}
			if sp.IPFamilyPolicy != nil {
				count[fmt.Sprintf("%s %v", *sp.IPFamilyPolicy, sp.IPFamilies)]++
			}
			for _, p := range sp.Ports {
				count["proto "+string(p.Protocol)]++
			}
			if len(sp.Ports) > 1 {
				count["several ports"]++
			}
			if sp.SessionAffinity == v1.ServiceAffinityClientIP {
				count["affinity"]++
			}
			if sp.ExternalTrafficPolicy != "" {
				count["etp "+string(sp.ExternalTrafficPolicy)]++
			}
			if sp.InternalTrafficPolicy != nil {
				count["itp "+string(*sp.InternalTrafficPolicy)]++
			}
			if sp.TrafficDistribution != nil {
				count["trafficDistribution"]++
			}
			for _, r := range sp.LoadBalancerSourceRanges {
				if r != strings.TrimSpace(r) {
					count["source range with spaces"]++
				}
				count["source ranges"]++
			}
			if len(sp.ExternalIPs) > 0 {
				count["external IPs"]++
			}
			if sp.AllocateLoadBalancerNodePorts != nil {
				count["no LB node ports"]++
			}
			for _, ing := range svc.Status.LoadBalancer.Ingress {
				m := "unset"
				if ing.IPMode != nil {
					m = string(*ing.IPMode)
				}
				count["ipMode "+m]++
			}
		}
		addrs := map[string]int{}
		for _, es := range st.Slices {
			count["slice "+string(es.AddressType)]++
			for _, e := range es.Endpoints {
				addrs[es.Namespace+es.Labels[discoveryv1.LabelServiceName]+e.Addresses[0]]++
				node := "none"
				if e.NodeName != nil {
					node = *e.NodeName
				}
				count["node "+node]++
				c := e.Conditions
				count[fmt.Sprintf("conditions %s/%s/%s", tri(c.Ready), tri(c.Serving), tri(c.Terminating))]++
				if e.Hints != nil {
					count["hints"]++
				}
				if e.Zone != nil {
					count["zone"]++
				}
			}
		}
		for _, n := range addrs {
			if n > 1 {
				count["duplicate endpoint"]++
			}
		}
		o := GenerateOptions(NewRand(seed))
		for _, f := range o.Flags() {
			count["flag "+strings.SplitN(f, "=", 2)[0]]++
		}
	}
	want := []string{
		"type ClusterIP", "type NodePort", "type LoadBalancer", "type ExternalName", "headless",
		"SingleStack [IPv4]", "SingleStack [IPv6]", "PreferDualStack [IPv4 IPv6]", "RequireDualStack [IPv6 IPv4]",
		"proto TCP", "proto UDP", "proto SCTP", "several ports", "affinity",
		"etp Local", "etp Cluster", "itp Local", "itp Cluster", "trafficDistribution",
		"source ranges", "source range with spaces", "external IPs", "no LB node ports",
		"ipMode VIP", "ipMode Proxy", "ipMode unset", "slice IPv4", "slice IPv6",
		"node node1", "node node2", "node " + OtherNode, "node none", "hints", "zone", "duplicate endpoint",
		"flag --nodeport-addresses", "flag --masquerade-all", "flag --ipvs-exclude-cidrs", "flag --ipvs-scheduler",
	}
	for _, r := range []string{"nil", "true", "false"} {
		for _, s := range []string{"nil", "true", "false"} {
			for _, te := range []string{"nil", "true", "false"} {
				want = append(want, fmt.Sprintf("conditions %s/%s/%s", r, s, te))
			}
		}
	}
	for _, w := range want {
		if count[w] == 0 {
			t.Errorf("no %q in 100 seeds", w)
		}
	}
	t.Logf("coverage over 100 seeds: %v", count)
}

func tri(b *bool) string {
	if b == nil {
		return "nil"
	}
	return fmt.Sprint(*b)
}

func TestOptionsFlags(t *testing.T) {
	tests := []struct {
		o    Options
		want string
	}{
		{Options{}, "(defaults)"},
		{Options{NodePortAddresses: "primary", MasqueradeAll: true, ExcludeCIDRs: "10.96.0.0/28", Scheduler: "sh"},
			"--nodeport-addresses=primary --masquerade-all --ipvs-exclude-cidrs=10.96.0.0/28 --ipvs-scheduler=sh"},
	}
	for _, tt := range tests {
		if got := tt.o.String(); got != tt.want {
			t.Errorf("%+v: got %q, want %q", tt.o, got, tt.want)
		}
	}
}
