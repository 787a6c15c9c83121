package fuzzgen

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Annotations the IPVS planner reads (ipvs.AnnotationScheduler and
// ipvs.AnnotationSchedFlags; this package cannot import pkg/ipvs, whose
// tests import it).
const (
	AnnotationScheduler  = servicecache.AnnotationPrefix + "scheduler"
	AnnotationSchedFlags = servicecache.AnnotationPrefix + "mh-flags"
)

// NodeName is the usual name of the Node the scenario is planned for.
const NodeName = "node-a"

// Scenario is one decoded fuzz input: the API objects a proxy would see
// and the settings of both planners.
type Scenario struct {
	Node     *v1.Node
	Services []*v1.Service
	Slices   []*discovery.EndpointSlice

	// IPVS planner (ipvs.Config).
	Scheduler         string // a valid --ipvs-scheduler or ""
	NodePortAddresses []netip.Addr
	LocalAddresses    []netip.Addr // also iptables.Config.LocalAddresses
	ExcludeCIDRs      []netip.Prefix
	LocalFallback     bool

	// iptables planner (iptables.Config).
	Families       []uint8 // iptables.Family values, possibly unknown or repeated
	ClusterCIDRs   []netip.Prefix
	NotLocal       map[uint8][]string
	MasqueradeAll  bool
	MasqueradeMark uint32
	NodePortCIDRs  []netip.Prefix
	NodeIPs        []netip.Addr

	used int // bytes of the input decoded
}

// Used is how many bytes of the input the scenario was decoded from; the
// rest of the input does not matter.
func (s *Scenario) Used() int { return s.used }

// Limits of the generated scenario. The "huge" counts are rare.
const (
	maxServices         = 8
	maxSlicesPerService = 3
	maxPorts            = 5
	maxHugePorts        = 300
	maxEndpoints        = 8
	maxHugeEndpoints    = 80
)

var (
	namespaces = []string{"default", "kube-system", "", "other"}
	names      = []string{"web", "dns", "a", "b", "", "very-long-name-0123456789abcdef0123456789abcdef0123456789"}
	portNames  = []string{"http", "", "dns", "https", "p", "HTTP", "x y"}
	protocols  = []v1.Protocol{v1.ProtocolTCP, v1.ProtocolTCP, v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolUDP,
		v1.ProtocolSCTP, "", "tcp", "ICMP", "Udp", "\x00"}
	nodes = []string{NodeName, "node-b", "", "node-c"}
	zones = []string{"zone-a", "zone-b", "", "zone-c"}
)

// Generate decodes a scenario from fuzz input bytes.
func Generate(b []byte) *Scenario {
	d := NewData(b)
	s := &Scenario{}
	s.genSettings(d)
	s.Node = genNode(d)
	// Each Service is followed by its slices, so that a mutation of the
	// Service's bytes leaves the others alone.
	for range d.Intn(maxServices + 1) {
		svc := genService(d)
		s.Services = append(s.Services, svc)
		for range d.Intn(maxSlicesPerService + 1) {
			s.Slices = append(s.Slices, genSlice(d, len(s.Slices), svc))
		}
	}
	// Slices of other or missing Services.
	for range d.Intn(3) {
		var svc *v1.Service
		if len(s.Services) > 0 {
			svc = s.Services[d.Intn(len(s.Services))]
		}
		s.Slices = append(s.Slices, genSlice(d, len(s.Slices), svc))
	}
	s.used = d.i
	return s
}

func (s *Scenario) genSettings(d *Data) {
	s.Scheduler = Pick(d, "", "rr", "mh", "sh", "wlc", "lc", "twos")
	s.LocalFallback = d.Bool()
	for range d.Intn(5) {
		s.NodePortAddresses = append(s.NodePortAddresses, genConfigAddr(d))
	}
	for range d.Intn(6) {
		s.LocalAddresses = append(s.LocalAddresses, genConfigAddr(d))
	}
	if d.OneIn(4) {
		for range 1 + d.Intn(3) {
			s.ExcludeCIDRs = append(s.ExcludeCIDRs, genConfigPrefix(d))
		}
	}
	s.Families = Pick(d, []uint8{4, 6}, []uint8{4}, []uint8{6}, []uint8{6, 4}, nil, []uint8{4, 4}, []uint8{5}, []uint8{0, 6})
	for range d.Intn(4) {
		s.ClusterCIDRs = append(s.ClusterCIDRs, genConfigPrefix(d))
	}
	if d.OneIn(4) {
		s.NotLocal = Pick(d,
			map[uint8][]string{4: {"!", "-s", "10.244.0.0/16"}, 6: {"!", "-s", "fd00:244::/56"}},
			map[uint8][]string{4: {"!", "-i", "cbr0"}},
			map[uint8][]string{6: {"!", "-i", "veth+"}},
			map[uint8][]string{4: {}})
	}
	s.MasqueradeAll = d.OneIn(4)
	s.MasqueradeMark = PickOr(d, d.Uint32, 0, 1<<14, 1, 1<<31, 0xffffffff)
	if d.OneIn(3) {
		for range d.Intn(4) {
			s.NodePortCIDRs = append(s.NodePortCIDRs, genConfigPrefix(d))
		}
	}
	for range d.Intn(3) {
		s.NodeIPs = append(s.NodeIPs, genConfigAddr(d))
	}
}

// Address pools. Small pools make Services and endpoints collide, which is
// where the interesting cases are.
type pool struct {
	v4, v6 string
	// v6First makes IPv6 the more frequent family.
	v6First bool
}

var (
	poolService  = pool{v4: "10.96.0.", v6: "fd00:96::"}
	poolPod      = pool{v4: "10.244.0.", v6: "fd00:244::"}
	poolExternal = pool{v4: "203.0.113.", v6: "2001:db8::"}
	poolNode     = pool{v4: "192.168.1.", v6: "fd00:1::"}
	pools        = []pool{poolService, poolPod, poolExternal, poolNode}
)

// specialAddrs are strings the API has allowed at some point or that
// parsers get wrong.
var specialAddrs = []string{
	"0.0.0.0", "::", "", "None", "::ffff:0.0.0.0", "127.0.0.1", "::1", "ff02::1",
	"255.255.255.255", "224.0.0.1", "169.254.169.254", "fe80::1", "0:0:0:0:0:ffff:a60:1", "::ffff:10.96.0.1",
	"10.96.0.256", "10.96.0", "1.2.3.4.5", "10.96.0.1/32", " 10.96.0.1", "10.96.0.1 ", "hello",
	"fe80::1%eth0", "fd00:96::1%1", "010.096.000.001", "0x0a.0.0.1", "10.96.0.01", "::ffff:10.96.0.300",
	"[fd00:96::1]", "fd00:96::1:", "1::2::3", "10.96.0.-1", "4294967297.0.0.1",
}

// genAddr returns an address string, most often a valid one from p.
func genAddr(d *Data, p pool) string {
	x := 1 + d.Intn(6)
	v4, v6 := p.v4+strconv.Itoa(x), p.v6+strconv.Itoa(x)
	if p.v6First {
		v4, v6 = v6, v4
	}
	switch d.Intn(16) {
	case 0, 1, 2, 3:
		return v4
	case 4, 5, 6:
		return v6
	case 7:
		q := Pick(d, pools...)
		return Pick(d, q.v4+strconv.Itoa(x), q.v6+strconv.Itoa(x))
	case 8, 9:
		return Pick(d, specialAddrs...)
	case 10:
		return string(d.Bytes(d.Intn(20)))
	case 11:
		return netip.AddrFrom4([4]byte(d.Bytes(4))).String()
	case 12:
		return netip.AddrFrom16([16]byte(d.Bytes(16))).String()
	case 13:
		// Leading zeros, which old API servers accepted.
		a := netip.MustParseAddr(p.v4 + strconv.Itoa(x)).As4()
		return fmt.Sprintf("%03d.%03d.%d.%02d", a[0], a[1], a[2], a[3])
	case 14:
		return "::ffff:" + p.v4 + strconv.Itoa(x)
	}
	return Pick(d, p.v6+strconv.Itoa(x)+"%eth0", p.v4+strconv.Itoa(x)+"%0", p.v6+"0:0:"+strconv.Itoa(x))
}

var specialPrefixes = []string{
	"0.0.0.0/0", "::/0", "10.0.0.0/8", "192.168.1.0/24", "fd00:1::/64", "203.0.113.0/24", "2001:db8::/32",
	" 10.0.0.0/8 ", "10.0.0.1/8", "::ffff:10.0.0.0/104", "::ffff:0:0/96", "::ffff:10.0.0.0/90",
	"010.000.000.000/8", "10.0.0.0/33", "fd00::/129", "10.0.0.0", "10.0.0.0/", "/8", "10.0.0.0/-1",
	"10.0.0.0/08", "fe80::%eth0/64", "garbage", "", "192.168.1.10/32", "fd00:1::10/128",
}

func genPrefix(d *Data) string {
	switch d.Intn(4) {
	case 0, 1:
		return Pick(d, specialPrefixes...)
	case 2:
		return genAddr(d, Pick(d, pools...)) + "/" + strconv.Itoa(d.Intn(130))
	}
	return string(d.Bytes(d.Intn(24)))
}

// genConfigAddr returns an address as the proxy passes it to a planner:
// usually a node address, sometimes one a planner must drop (the zero
// Addr, unspecified, IPv4-mapped) or any address.
func genConfigAddr(d *Data) netip.Addr {
	x := byte(1 + d.Intn(6))
	switch d.Intn(10) {
	case 0, 1, 2:
		return netip.AddrFrom4([4]byte{192, 168, 1, x})
	case 3, 4:
		return netip.AddrFrom16([16]byte{0: 0xfd, 3: 1, 15: x})
	case 5:
		// A Service address that is also a host address.
		return Pick(d, netip.AddrFrom4([4]byte{203, 0, 113, x}), netip.AddrFrom4([4]byte{10, 96, 0, x}),
			netip.AddrFrom16([16]byte{0: 0x20, 1: 0x01, 2: 0x0d, 3: 0xb8, 15: x}))
	case 6:
		return Pick(d, netip.Addr{}, netip.IPv4Unspecified(), netip.IPv6Unspecified(),
			netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("fe80::1"))
	case 7:
		return asMapped(netip.AddrFrom4([4]byte{192, 168, 1, x}))
	case 8:
		return netip.AddrFrom4([4]byte(d.Bytes(4)))
	}
	return netip.AddrFrom16([16]byte(d.Bytes(16)))
}

// asMapped returns a as an IPv4-mapped IPv6 address (::ffff:a.b.c.d).
func asMapped(a netip.Addr) netip.Addr { return netip.AddrFrom16(a.As16()) }

// genConfigPrefix returns a prefix as flags give them, or a malformed one
// (zero, unmasked, IPv4-mapped) that the planners must normalize or drop.
func genConfigPrefix(d *Data) netip.Prefix {
	switch d.Intn(6) {
	case 0, 1:
		p, err := netip.ParsePrefix(Pick(d, "10.244.0.0/16", "fd00:244::/56", "192.168.1.0/24", "fd00:1::/64",
			"0.0.0.0/0", "::/0", "203.0.113.0/28", "10.96.0.0/29", "192.168.1.5/32"))
		if err != nil {
			panic(err)
		}
		return p
	case 2:
		return netip.Prefix{}
	case 3:
		return netip.PrefixFrom(genConfigAddr(d), d.Intn(130))
	case 4:
		return netip.PrefixFrom(asMapped(netip.AddrFrom4([4]byte{10, 96, 0, 0})), Pick(d, 90, 96, 104, 120, 128, 129))
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, 1, byte(d.Intn(8))}), d.Intn(33))
}

func genNode(d *Data) *v1.Node {
	if d.OneIn(16) {
		return nil
	}
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: Pick(d, nodes...)}}
	if z := Pick(d, zones...); z != "" || d.Bool() {
		n.Labels = map[string]string{v1.LabelTopologyZone: z}
	}
	for range d.Intn(5) {
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{
			Type:    Pick(d, v1.NodeInternalIP, v1.NodeExternalIP, v1.NodeHostName, v1.NodeInternalDNS),
			Address: genAddr(d, poolNode),
		})
	}
	for range d.Intn(3) {
		n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, genPrefix(d))
	}
	if len(n.Spec.PodCIDRs) > 0 && d.Bool() {
		n.Spec.PodCIDR = n.Spec.PodCIDRs[0]
	}
	return n
}

func genService(d *Data) *v1.Service {
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{
		Namespace: Pick(d, namespaces...),
		Name:      Pick(d, names...),
		UID:       types.UID("uid-" + strconv.Itoa(d.Intn(4))),
	}}
	if d.OneIn(12) {
		svc.Labels = map[string]string{servicecache.LabelServiceProxyName: Pick(d, "other", "")}
	}
	genAnnotations(d, svc)
	svc.Spec.Type = Pick(d, v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer,
		v1.ServiceTypeClusterIP, "", v1.ServiceTypeExternalName, "Weird")
	genClusterIPs(d, svc)

	n := d.Intn(maxPorts + 1)
	if d.OneIn(24) {
		n = d.Intn(maxHugePorts + 1)
	}
	for range n {
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{
			Name:     Pick(d, portNames...),
			Protocol: Pick(d, protocols...),
			Port:     genPort(d),
			NodePort: PickOr(d, d.Int32, 0, 30000, 30001, 30002, 30000, 65535, 1, -1, 70000),
		})
	}
	for range d.Intn(4) {
		svc.Spec.ExternalIPs = append(svc.Spec.ExternalIPs, genAddr(d, poolExternal))
	}
	for range d.Intn(4) {
		ing := v1.LoadBalancerIngress{IP: genAddr(d, poolExternal)}
		if d.OneIn(4) {
			ing.Hostname = "lb.example.com"
		}
		ing.IPMode = Ptr(d, v1.LoadBalancerIPModeVIP, v1.LoadBalancerIPModeProxy, "Bogus")
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, ing)
	}
	for range d.Intn(4) {
		svc.Spec.LoadBalancerSourceRanges = append(svc.Spec.LoadBalancerSourceRanges, genPrefix(d))
	}
	svc.Spec.SessionAffinity = Pick(d, v1.ServiceAffinityNone, v1.ServiceAffinityClientIP, "", "Weird")
	switch d.Intn(5) {
	case 1:
		svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{}
	case 2, 3, 4:
		svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{
			TimeoutSeconds: PtrOr(d, d.Int32, 10800, 1, 0, -1, 86400, 86401, math.MaxInt32, math.MinInt32),
		}}
	}
	svc.Spec.ExternalTrafficPolicy = Pick(d, v1.ServiceExternalTrafficPolicyCluster, v1.ServiceExternalTrafficPolicyLocal, "", "Weird")
	svc.Spec.InternalTrafficPolicy = Ptr(d, v1.ServiceInternalTrafficPolicyCluster, v1.ServiceInternalTrafficPolicyLocal, "Weird")
	svc.Spec.HealthCheckNodePort = PickOr(d, d.Int32, 32000, 0, -1, 65535, 70000)
	svc.Spec.TrafficDistribution = Ptr(d, v1.ServiceTrafficDistributionPreferClose, v1.ServiceTrafficDistributionPreferSameZone,
		v1.ServiceTrafficDistributionPreferSameNode, "", "Weird")
	return svc
}

func genPort(d *Data) int32 {
	return PickOr(d, d.Int32, 80, 53, 443, 8080, 1, 65535, 0, -1, 65536, 70000, 12345)
}

func genAnnotations(d *Data, svc *v1.Service) {
	set := func(k, v string) {
		if svc.Annotations == nil {
			svc.Annotations = map[string]string{}
		}
		svc.Annotations[k] = v
	}
	if d.OneIn(3) {
		set(AnnotationScheduler, Pick(d, "rr", "mh", "sh", "", " sh ", "wrr", "RR", "bogus", "mh,sh", "twos", "\x00"))
	}
	if d.OneIn(3) {
		set(AnnotationSchedFlags, Pick(d, "mh-port", "mh-fallback,mh-port", "", "sh-port", "sh-fallback", " mh-fallback , ",
			",,,", "bogus", "mh-port,sh-port", "MH-PORT"))
	}
	if d.OneIn(6) {
		set(servicecache.AnnotationPrefix+Pick(d, "other", "", "scheduler "), "x")
	}
	if d.OneIn(6) {
		set("service.kubernetes.io/topology-mode", "Auto")
	}
}

func genClusterIPs(d *Data, svc *v1.Service) {
	var ips []string
	switch d.Intn(8) {
	case 0, 1:
		ips = []string{genAddr(d, poolService)}
	case 2:
		// Dual-stack, either family first.
		a, b := "10.96.0."+strconv.Itoa(1+d.Intn(6)), "fd00:96::"+strconv.Itoa(1+d.Intn(6))
		if d.Bool() {
			a, b = b, a
		}
		ips = []string{a, b}
	case 3:
		ips = []string{v1.ClusterIPNone}
	case 4:
		// Only the legacy field.
		svc.Spec.ClusterIP = genAddr(d, poolService)
		return
	default:
		for range d.Intn(4) {
			ips = append(ips, genAddr(d, poolService))
		}
	}
	svc.Spec.ClusterIPs = ips
	switch {
	case len(ips) == 0:
	case d.OneIn(5):
		svc.Spec.ClusterIP = Pick(d, "", v1.ClusterIPNone, genAddr(d, poolService))
	default:
		svc.Spec.ClusterIP = ips[0]
	}
}

// genSlice makes an EndpointSlice, usually for svc and with ports that
// match the Service's.
func genSlice(d *Data, i int, svc *v1.Service) *discovery.EndpointSlice {
	ns, svcName := Pick(d, namespaces...), Pick(d, names...)
	var svcPorts []v1.ServicePort
	if svc != nil && !d.OneIn(8) {
		ns, svcName, svcPorts = svc.Namespace, svc.Name, svc.Spec.Ports
	}
	// Names are unique, as the API makes them within a namespace.
	s := &discovery.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%02d", svcName, i)}}
	switch d.Intn(8) {
	case 6:
		s.Labels = map[string]string{"other": svcName}
	case 7:
		s.Labels = map[string]string{discovery.LabelServiceName: Pick(d, names...)}
	default:
		s.Labels = map[string]string{discovery.LabelServiceName: svcName}
	}
	s.AddressType = Pick(d, discovery.AddressTypeIPv4, discovery.AddressTypeIPv6, discovery.AddressTypeIPv4,
		discovery.AddressTypeFQDN, "", "Bogus")
	for range d.Intn(4) {
		var p discovery.EndpointPort
		if len(svcPorts) > 0 && !d.OneIn(4) {
			sp := svcPorts[d.Intn(len(svcPorts))]
			p.Name, p.Protocol = &sp.Name, &sp.Protocol
			if sp.Protocol == v1.ProtocolTCP && d.Bool() {
				p.Protocol = nil // the default
			}
		} else {
			p.Name, p.Protocol = Ptr(d, portNames...), Ptr(d, protocols...)
			if p.Name == nil && d.Bool() {
				p.Name = ptr.To("") // the usual unnamed port
			}
		}
		p.Port = PtrOr(d, d.Int32, 8080, 8080, 80, 53, 443, 1, 65535, 0, -1, 65536)
		if p.Port == nil && !d.OneIn(4) {
			p.Port = ptr.To[int32](8081)
		}
		s.Ports = append(s.Ports, p)
	}
	n := d.Intn(maxEndpoints + 1)
	if d.OneIn(24) {
		n = d.Intn(maxHugeEndpoints + 1)
	}
	pfam := poolPod
	pfam.v6First = s.AddressType == discovery.AddressTypeIPv6
	for range n {
		s.Endpoints = append(s.Endpoints, genEndpoint(d, pfam))
	}
	return s
}

func genEndpoint(d *Data, p pool) discovery.Endpoint {
	e := discovery.Endpoint{}
	for range Pick(d, 1, 1, 1, 0, 2, 3) {
		e.Addresses = append(e.Addresses, genAddr(d, p))
	}
	e.Conditions = discovery.EndpointConditions{
		Ready:       Ptr(d, true, false),
		Serving:     Ptr(d, true, false),
		Terminating: Ptr(d, false, true),
	}
	e.NodeName = Ptr(d, nodes...)
	e.Zone = Ptr(d, zones...)
	if d.OneIn(3) {
		e.Hints = &discovery.EndpointHints{}
		for range d.Intn(4) {
			e.Hints.ForZones = append(e.Hints.ForZones, discovery.ForZone{Name: Pick(d, zones...)})
		}
		for range d.Intn(4) {
			e.Hints.ForNodes = append(e.Hints.ForNodes, discovery.ForNode{Name: Pick(d, nodes...)})
		}
	}
	return e
}

// Snapshot builds the snapshot the service cache would hold for the
// scenario: ConvertNode, then ConvertService and MergeEndpointSlices per
// Service (the last object of a key wins, as in an informer's store),
// sorted by key. Every slice is offered to every Service, which must
// ignore the ones that are not its own.
func (s *Scenario) Snapshot() *servicecache.Snapshot {
	node, _ := servicecache.ConvertNode(s.Node)
	return s.SnapshotOf(node, s.Services, s.Slices)
}

// SnapshotOf is Snapshot for a subset of the scenario's objects.
func (s *Scenario) SnapshotOf(node servicecache.Node, svcs []*v1.Service, eps []*discovery.EndpointSlice) *servicecache.Snapshot {
	byKey := map[servicecache.ServiceKey]*servicecache.Service{}
	for _, obj := range svcs {
		key := servicecache.ServiceKey{Namespace: obj.Namespace, Name: obj.Name}
		svc, _, _ := servicecache.BuildService(obj, eps)
		if svc == nil {
			delete(byKey, key)
			continue
		}
		byKey[key] = svc
	}
	snap := &servicecache.Snapshot{Node: node}
	for _, svc := range byKey {
		snap.Services = append(snap.Services, svc)
	}
	slices.SortFunc(snap.Services, func(a, b *servicecache.Service) int { return a.Key.Compare(b.Key) })
	return snap
}

// Keys returns the keys of snap's Services, in snapshot order.
func Keys(snap *servicecache.Snapshot) []servicecache.ServiceKey {
	out := make([]servicecache.ServiceKey, 0, len(snap.Services))
	for _, svc := range snap.Services {
		out = append(out, svc.Key)
	}
	return out
}
