// Package benchshape builds the cluster shape of `make bench` for the Go
// benchmarks of the planners, appliers and the proxier: n Services with one
// TCP port and 5 ready endpoints each (on another node), every 5th a
// NodePort, on a node with one address.
package benchshape

import (
	"fmt"
	"net/netip"
	"slices"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Sizes are the cluster sizes the benchmarks run at.
var Sizes = []int{10000, 50000}

// NodeAddr is the benchmark node's only address.
var NodeAddr = netip.MustParseAddr("172.30.0.11")

// Node is the node the benchmarks plan for.
var Node = servicecache.Node{Name: "node-a", Addresses: []netip.Addr{NodeAddr}}

// Service is the i-th Service of the shape. Endpoint sets differ with
// extra, so that a benchmark can make a changed version of one Service.
func Service(i, extra int) *servicecache.Service {
	eps := make([]servicecache.Endpoint, 5+extra)
	for j := range eps {
		// 10.(128+n>>16).(n>>8).n: distinct endpoints per Service.
		n := i*5 + j
		if j >= 5 {
			n = 1<<22 + i*8 + j
		}
		eps[j] = servicecache.Endpoint{Addr: netip.AddrFrom4([4]byte{10, byte(128 + n>>16), byte(n >> 8), byte(n)}),
			Port: 8080, Ready: true, Serving: true, NodeName: "node-b"}
	}
	var nodePort uint16
	typ := v1.ServiceTypeClusterIP
	if i%5 == 0 {
		nodePort, typ = uint16(30000+i/5%2768), v1.ServiceTypeNodePort
	}
	return &servicecache.Service{
		Key:        servicecache.ServiceKey{Namespace: fmt.Sprintf("ns%03d", i%100), Name: fmt.Sprintf("svc%06d", i)},
		Type:       typ,
		ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96 + byte(i>>16), byte(i >> 8), byte(i)})},
		Ports:      []servicecache.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: nodePort, Endpoints: eps}},
	}
}

// Snapshot is n Services sorted by key, as the service cache hands them
// out, all of them in Changed (a first sync).
func Snapshot(n int) *servicecache.Snapshot {
	svcs := make([]*servicecache.Service, n)
	for i := range svcs {
		svcs[i] = Service(i, 0)
	}
	SortServices(svcs)
	changed := make([]servicecache.ServiceKey, n)
	for i, s := range svcs {
		changed[i] = s.Key
	}
	return &servicecache.Snapshot{Services: svcs, Node: Node, Changed: changed}
}

// SortServices sorts by key.
func SortServices(svcs []*servicecache.Service) {
	slices.SortFunc(svcs, func(a, b *servicecache.Service) int { return a.Key.Compare(b.Key) })
}

// Replace returns a snapshot with svc in place of the Service of the same
// key and only that key in Changed, sharing everything else.
func Replace(s *servicecache.Snapshot, svc *servicecache.Service) *servicecache.Snapshot {
	out := *s
	out.Services = slices.Clone(s.Services)
	i, found := slices.BinarySearchFunc(out.Services, svc.Key, func(a *servicecache.Service, k servicecache.ServiceKey) int {
		return a.Key.Compare(k)
	})
	if found {
		out.Services[i] = svc
	}
	out.Changed = []servicecache.ServiceKey{svc.Key}
	out.TriggerTimes = nil
	return &out
}
