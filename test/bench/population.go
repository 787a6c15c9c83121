package bench

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// The API state: N selectorless Services in namespace bench, port 80/TCP
// to 8080, every NodePortEvery-th one a NodePort, each with one hand-made
// EndpointSlice of ready endpoints. No pods exist: the proxies program
// addresses nobody answers on, which is all the kernel needs. The endpoints
// name no node, so none is local to the node under test (as most of a big
// cluster's endpoints are not): no per-endpoint hairpin entries.
const (
	namespace   = "bench"
	servicePort = 80
	targetPort  = 8080
	managedBy   = "bench.kube-ipvs-proxy"
)

// svc is one benchmark Service and its EndpointSlice as last written.
type svc struct {
	Name     string
	IP       netip.Addr
	NodePort int32
	slice    *discoveryv1.EndpointSlice
}

// vs is the Service's ClusterIP virtual server.
func (s *svc) vs() string { return fmt.Sprintf("TCP/%s:%d", s.IP, servicePort) }

// addrs returns the endpoint addresses of its slice.
func (s *svc) addrs() []string {
	var out []string
	for _, e := range s.slice.Endpoints {
		out = append(out, e.Addresses...)
	}
	return out
}

type population struct {
	cs            kubernetes.Interface
	endpoints     int
	nodePortEvery int

	mu    sync.Mutex
	svcs  []*svc
	fresh atomic.Uint32 // next fresh endpoint address
}

// newClient is a client for bulk writes: far above client-go's default
// rate limit.
func newClient(kubeconfig string) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 2000, 4000
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	return kubernetes.NewForConfig(rc)
}

func newPopulation(cs kubernetes.Interface, endpoints, nodePortEvery int) *population {
	return &population{cs: cs, endpoints: endpoints, nodePortEvery: nodePortEvery}
}

// initialAddr is endpoint k of Service i: 10.244.0.1 onwards, skipping .0
// and .255.
func initialAddr(i, k, perSvc int) netip.Addr {
	n := i*perSvc + k
	return netip.AddrFrom4([4]byte{10, 244, byte(n / 254), byte(n%254 + 1)})
}

// freshAddr is an endpoint address not used before, from 10.245.0.1 on.
func (p *population) freshAddr() netip.Addr {
	n := p.fresh.Add(1) - 1
	return netip.AddrFrom4([4]byte{10, byte(245 + n/(256*254)), byte(n / 254 % 256), byte(n%254 + 1)})
}

func (p *population) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.svcs)
}

// get returns Service i.
func (p *population) get(i int) *svc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.svcs[i]
}

// nodePorts counts the NodePort Services among the first n.
func (p *population) nodePorts(n int) int {
	c := 0
	for i := 0; i < n; i++ {
		if i%p.nodePortEvery == 0 {
			c++
		}
	}
	return c
}

// ensure creates Services until there are n, with workers in parallel.
func (p *population) ensure(ctx context.Context, n int) error {
	if _, err := p.cs.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	have := p.size()
	if n <= have {
		return nil
	}
	made := make([]*svc, n-have)
	next := atomic.Int64{}
	next.Store(int64(have))
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				s, err := p.create(ctx, i)
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
				made[i-have] = s
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	p.mu.Lock()
	p.svcs = append(p.svcs, made...)
	p.mu.Unlock()
	return nil
}

func svcName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// create makes Service i and its EndpointSlice.
func (p *population) create(ctx context.Context, i int) (*svc, error) {
	name := svcName(i)
	spec := v1.ServiceSpec{
		Type:  v1.ServiceTypeClusterIP,
		Ports: []v1.ServicePort{{Protocol: v1.ProtocolTCP, Port: servicePort, TargetPort: intstr.FromInt32(targetPort)}},
	}
	if i%p.nodePortEvery == 0 {
		spec.Type = v1.ServiceTypeNodePort
	}
	created, err := p.cs.CoreV1().Services(namespace).Create(ctx, &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Service %s: %w", name, err)
	}
	ip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		return nil, fmt.Errorf("Service %s: ClusterIP %q: %w", name, created.Spec.ClusterIP, err)
	}
	addrs := make([]netip.Addr, p.endpoints)
	for k := range addrs {
		addrs[k] = initialAddr(i, k, p.endpoints)
	}
	slice, err := p.cs.DiscoveryV1().EndpointSlices(namespace).Create(ctx, endpointSlice(name, addrs), metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating the EndpointSlice of %s: %w", name, err)
	}
	return &svc{Name: name, IP: ip, NodePort: created.Spec.Ports[0].NodePort, slice: slice}, nil
}

// endpointSlice is the slice of Service name with ready endpoints addrs.
func endpointSlice(name string, addrs []netip.Addr) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-bench", Labels: map[string]string{
			discoveryv1.LabelServiceName: name,
			discoveryv1.LabelManagedBy:   managedBy,
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(""), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](targetPort)}},
	}
	setAddrs(s, addrs)
	return s
}

func setAddrs(s *discoveryv1.EndpointSlice, addrs []netip.Addr) {
	s.Endpoints = s.Endpoints[:0]
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		})
	}
}

// setEndpoints replaces the endpoints of Service s with addrs in the API.
func (p *population) setEndpoints(ctx context.Context, s *svc, addrs []netip.Addr) error {
	p.mu.Lock()
	next := s.slice.DeepCopy()
	p.mu.Unlock()
	setAddrs(next, addrs)
	updated, err := p.cs.DiscoveryV1().EndpointSlices(namespace).Update(ctx, next, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("updating the EndpointSlice of %s: %w", s.Name, err)
	}
	p.mu.Lock()
	s.slice = updated
	p.mu.Unlock()
	return nil
}

// currentAddrs returns the endpoint addresses of s as last written.
func (p *population) currentAddrs(s *svc) []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []netip.Addr
	for _, a := range s.addrs() {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}
