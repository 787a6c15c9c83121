package healthcheck

// Service health check node ports, as kube-proxy's ServiceHealthServer: a
// LoadBalancer Service with externalTrafficPolicy: Local gets an HTTP server
// on its healthCheckNodePort that tells the cloud load balancer whether this
// node has local endpoints for it (200) or not (503).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// listenFunc opens one listener; net.ListenConfig.Listen in production,
// replaced in tests.
type listenFunc func(ctx context.Context, network, address string) (net.Listener, error)

// ServiceHealthServer serves the health check node ports of the Services
// with externalTrafficPolicy: Local. It is safe for concurrent use; the sync
// loop calls SyncServices then SyncEndpoints after each sync.
type ServiceHealthServer struct {
	nodeName string
	// addrs are the addresses each port listens on, unless all: every
	// address of both families (":port"). Guarded by mu.
	addrs        []netip.Addr
	all          bool
	proxyHealthy func() bool
	listen       listenFunc

	mu       sync.RWMutex
	services map[servicecache.ServiceKey]*hcInstance
	// counts is the last SyncEndpoints input, so that a port opened later
	// starts with the right count.
	counts map[servicecache.ServiceKey]int
	// failed remembers the last error of each port that could not be
	// opened, so that a port failing sync after sync is logged as an error
	// once (and again when the error changes), not every second.
	failed map[servicecache.ServiceKey]string

	wg sync.WaitGroup // serving goroutines
}

// hcInstance is the health check of one Service.
type hcInstance struct {
	key     servicecache.ServiceKey
	port    uint16
	servers []*http.Server
	// listeners are closed with the servers too: a server closed before
	// its goroutine got to Serve would close its listener only later, and
	// the port could not be opened again at once.
	listeners []net.Listener
	endpoints int // local ready endpoints, as upstream
}

// NewServiceHealthServer returns a server with no port open yet.
//
// addrs are the addresses the health check node ports listen on until
// SetAddresses says otherwise; nil: all addresses of both families. proxyHealthy is the proxy's own health
// (ProxyHealthServer.Health().Healthy, upstream's serviceProxyHealthy): while
// it is false every port answers 503 whatever its endpoints. nil counts as
// always healthy.
func NewServiceHealthServer(nodeName string, addrs []netip.Addr, proxyHealthy func() bool) *ServiceHealthServer {
	var lc net.ListenConfig
	return newServiceHealthServer(nodeName, addrs, proxyHealthy, lc.Listen)
}

func newServiceHealthServer(nodeName string, addrs []netip.Addr, proxyHealthy func() bool, listen listenFunc) *ServiceHealthServer {
	if proxyHealthy == nil {
		proxyHealthy = func() bool { return true }
	}
	own := ownAddrs(addrs)
	return &ServiceHealthServer{
		nodeName:     nodeName,
		addrs:        own,
		all:          len(own) == 0,
		proxyHealthy: proxyHealthy,
		listen:       listen,
		services:     make(map[servicecache.ServiceKey]*hcInstance),
		counts:       make(map[servicecache.ServiceKey]int),
		failed:       make(map[servicecache.ServiceKey]string),
	}
}

func ownAddrs(addrs []netip.Addr) []netip.Addr {
	own := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if a.IsValid() {
			own = append(own, a.Unmap())
		}
	}
	return own
}

// SetAddresses changes where the ports listen: on addrs (an unspecified
// address, 0.0.0.0 or ::, is every address of its family; none: nowhere),
// or with all on every address of both families. The proxy calls it on
// every sync with --nodeport-addresses resolved against the host's current
// addresses and the Node's primary IPs (servicecache
// NodePortAddresses.HealthCheckAddrs). When they change, every open port
// is closed and opened again on the new addresses; one that cannot be is
// retried by the next SyncServices.
func (hs *ServiceHealthServer) SetAddresses(addrs []netip.Addr, all bool) {
	own := ownAddrs(addrs)
	if all {
		own = own[:0]
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if all == hs.all && slices.Equal(own, hs.addrs) {
		return
	}
	klog.InfoS("Health check node ports now listen on other addresses", "node", hs.nodeName, "addresses", fmt.Sprint(own), "all", all)
	hs.addrs, hs.all = own, all
	for key, inst := range hs.services {
		hs.closeInstance(inst)
		reopened := &hcInstance{key: key, port: inst.port, endpoints: inst.endpoints}
		if err := hs.openInstance(reopened); err != nil {
			klog.ErrorS(err, "Failed to open the health check node port on the new addresses; retrying on every sync",
				"node", hs.nodeName, "service", key, "port", inst.port)
			hs.failed[key] = err.Error()
			delete(hs.services, key)
			continue
		}
		hs.services[key] = reopened
	}
}

// SyncServices makes the open ports match ports (Service → health check
// node port): ports of Services no longer listed, or listed with another
// port, are closed; new ones are opened; the others are left alone. A port
// that cannot be opened (in use by another process, say) is logged and
// retried on the next call; the other ports are not affected.
func (hs *ServiceHealthServer) SyncServices(ports map[servicecache.ServiceKey]uint16) {
	hs.mu.Lock()
	defer hs.mu.Unlock()

	for key, inst := range hs.services {
		if port, ok := ports[key]; !ok || port != inst.port {
			klog.V(2).InfoS("Closing health check node port", "service", key, "port", inst.port)
			hs.closeInstance(inst)
			delete(hs.services, key)
		}
	}
	for key := range hs.failed {
		if _, ok := ports[key]; !ok {
			delete(hs.failed, key)
		}
	}

	for key, port := range ports {
		if hs.services[key] != nil {
			continue
		}
		inst := &hcInstance{key: key, port: port, endpoints: hs.counts[key]}
		var err error
		if port == 0 {
			err = errors.New("no health check node port (0)")
		} else {
			err = hs.openInstance(inst)
		}
		if err != nil {
			msg := err.Error()
			if hs.failed[key] != msg {
				klog.ErrorS(err, "Failed to open the health check node port; retrying on every sync",
					"node", hs.nodeName, "service", key, "port", port)
			} else {
				klog.V(4).InfoS("Health check node port still cannot be opened", "service", key, "port", port, "err", err)
			}
			hs.failed[key] = msg
			continue
		}
		if _, retried := hs.failed[key]; retried {
			klog.InfoS("Opened the health check node port after earlier failures", "service", key, "port", port)
			delete(hs.failed, key)
		} else {
			klog.V(2).InfoS("Opened health check node port", "service", key, "port", port)
		}
		hs.services[key] = inst
	}
}

// SyncEndpoints sets the number of local endpoints of each Service (as
// computed by LocalEndpointCounts). Services not listed have none.
func (hs *ServiceHealthServer) SyncEndpoints(counts map[servicecache.ServiceKey]int) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.counts = make(map[servicecache.ServiceKey]int, len(counts))
	for key, n := range counts {
		hs.counts[key] = n
	}
	for key, inst := range hs.services {
		if n := hs.counts[key]; n != inst.endpoints {
			klog.V(3).InfoS("Reporting local endpoints for health check", "service", key, "endpoints", n)
			inst.endpoints = n
		}
	}
}

// Close closes every port and waits for the servers to stop. Call it once,
// at shutdown, after the last SyncServices.
func (hs *ServiceHealthServer) Close() {
	hs.mu.Lock()
	for key, inst := range hs.services {
		hs.closeInstance(inst)
		delete(hs.services, key)
	}
	hs.mu.Unlock()
	hs.wg.Wait()
}

// listenAddrs returns the network and addresses a port listens on.
func (hs *ServiceHealthServer) listenAddrs(port uint16) [][2]string {
	p := strconv.Itoa(int(port))
	if hs.all {
		// Both families at once where the host has IPv6, else IPv4.
		return [][2]string{{"tcp", net.JoinHostPort("", p)}}
	}
	out := make([][2]string, 0, len(hs.addrs))
	for _, a := range hs.addrs {
		network := "tcp4"
		if a.Is6() {
			network = "tcp6"
		}
		out = append(out, [2]string{network, net.JoinHostPort(a.String(), p)})
	}
	return out
}

// openInstance listens on every address of inst's port and serves them.
// On failure it closes what it opened, so that the next sync can retry.
func (hs *ServiceHealthServer) openInstance(inst *hcInstance) error {
	handler := hcHandler{key: inst.key, hs: hs}
	var lns []net.Listener
	for _, na := range hs.listenAddrs(inst.port) {
		ln, err := hs.listen(context.Background(), na[0], na[1])
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			return fmt.Errorf("listening on %s: %w", na[1], err)
		}
		lns = append(lns, ln)
	}
	inst.listeners = lns
	for _, ln := range lns {
		srv := &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: 10 * time.Second,
		}
		inst.servers = append(inst.servers, srv)
		hs.wg.Add(1)
		go func() {
			defer hs.wg.Done()
			klog.V(3).InfoS("Serving health check node port", "service", inst.key, "address", ln.Addr().String())
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "Health check node port server failed", "service", inst.key, "address", ln.Addr().String())
			}
		}()
	}
	return nil
}

func (hs *ServiceHealthServer) closeInstance(inst *hcInstance) {
	for _, srv := range inst.servers {
		if err := srv.Close(); err != nil {
			klog.ErrorS(err, "Closing health check node port", "service", inst.key, "port", inst.port)
		}
	}
	for _, ln := range inst.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			klog.ErrorS(err, "Closing health check node port listener", "service", inst.key, "port", inst.port)
		}
	}
	inst.servers, inst.listeners = nil, nil
}

// ServiceHealth is the JSON body of a health check node port, identical to
// kube-proxy's.
type ServiceHealth struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// hcHandler answers any path and method on a Service's port, as upstream.
type hcHandler struct {
	key servicecache.ServiceKey
	hs  *ServiceHealthServer
}

func (h hcHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.hs.mu.RLock()
	inst, open := h.hs.services[h.key]
	count := 0
	if open {
		count = inst.endpoints
	}
	h.hs.mu.RUnlock()
	healthy := h.hs.proxyHealthy()

	var body ServiceHealth
	body.Service.Namespace, body.Service.Name = h.key.Namespace, h.key.Name
	body.LocalEndpoints, body.ServiceProxyHealthy = count, healthy
	// Tab-indented: byte for byte what kube-proxy writes.
	out, err := json.MarshalIndent(body, "", "\t")
	if err != nil {
		http.Error(w, fmt.Sprintf("encoding service health: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(count))
	// A request racing the port's closing reports no endpoints (upstream
	// answers an empty 200 then).
	if open && count > 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write(out) // the client may have gone; nothing to do then
}

// LocalEndpointCounts computes the input of SyncServices and SyncEndpoints
// from a snapshot, as upstream's HealthCheckNodePorts and
// LocalReadyEndpoints:
//
//   - ports: every Service with externalTrafficPolicy: Local, a health check
//     node port and at least one port;
//   - counts: for those Services, the number of distinct addresses of
//     endpoints on this node (NodeName == snap.Node.Name) that are ready.
//     As upstream, serving-but-terminating endpoints do not count: a node
//     with only terminating endpoints must fail the check so that load
//     balancers stop sending it new connections. An address behind several
//     ports counts once. Services with no local ready endpoint are absent.
//
// Upstream runs one server per IP family, each counting its family's
// addresses; a dual-stack pod counts once in each. This single server counts
// each family apart and reports the larger count, which is what either
// upstream server reports when every pod has both families.
func LocalEndpointCounts(snap *servicecache.Snapshot) (ports map[servicecache.ServiceKey]uint16, counts map[servicecache.ServiceKey]int) {
	ports = make(map[servicecache.ServiceKey]uint16)
	counts = make(map[servicecache.ServiceKey]int)
	if snap == nil {
		return ports, counts
	}
	node := snap.Node.Name
	var seen map[netip.Addr]struct{}
	for _, svc := range snap.Services {
		if svc.HealthCheckNodePort == 0 || !svc.ExternalPolicyLocal || len(svc.Ports) == 0 {
			continue
		}
		ports[svc.Key] = svc.HealthCheckNodePort
		if node == "" {
			continue
		}
		if seen == nil {
			seen = make(map[netip.Addr]struct{})
		}
		clear(seen)
		var n4, n6 int
		for i := range svc.Ports {
			for _, ep := range svc.Ports[i].Endpoints {
				if !ep.Ready || ep.NodeName != node || !ep.Addr.IsValid() {
					continue
				}
				a := ep.Addr.Unmap()
				if _, dup := seen[a]; dup {
					continue
				}
				seen[a] = struct{}{}
				if a.Is4() {
					n4++
				} else {
					n6++
				}
			}
		}
		if n := max(n4, n6); n > 0 {
			counts[svc.Key] = n
		}
	}
	return ports, counts
}
