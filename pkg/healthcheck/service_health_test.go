package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

var (
	svcA = servicecache.ServiceKey{Namespace: "ns", Name: "a"}
	svcB = servicecache.ServiceKey{Namespace: "ns", Name: "b"}
	svcC = servicecache.ServiceKey{Namespace: "other", Name: "c"}
)

func shEP(addr string, port uint16, node string, ready, serving, terminating bool) servicecache.Endpoint {
	return servicecache.Endpoint{Addr: netip.MustParseAddr(addr), Port: port, NodeName: node,
		Ready: ready, Serving: serving, Terminating: terminating}
}

// shLocalLB is a Local LoadBalancer Service with the given ports.
func shLocalLB(key servicecache.ServiceKey, hc uint16, ports ...servicecache.ServicePort) *servicecache.Service {
	return &servicecache.Service{Key: key, Type: v1.ServiceTypeLoadBalancer, ExternalPolicyLocal: true,
		HealthCheckNodePort: hc, Ports: ports}
}

func shPort(name string, eps ...servicecache.Endpoint) servicecache.ServicePort {
	return servicecache.ServicePort{Name: name, Protocol: v1.ProtocolTCP, Port: 80, Endpoints: eps}
}

func TestLocalEndpointCounts(t *testing.T) {
	ready := func(addr string, port uint16, node string) servicecache.Endpoint {
		return shEP(addr, port, node, true, true, false)
	}
	tests := []struct {
		name       string
		node       string
		services   []*servicecache.Service
		wantPorts  map[servicecache.ServiceKey]uint16
		wantCounts map[servicecache.ServiceKey]int
	}{
		{
			name:       "empty",
			node:       "n1",
			wantPorts:  map[servicecache.ServiceKey]uint16{},
			wantCounts: map[servicecache.ServiceKey]int{},
		},
		{
			name: "local ready endpoints count, remote ones do not",
			node: "n1",
			services: []*servicecache.Service{shLocalLB(svcA, 30001, shPort("http",
				ready("10.244.1.2", 8080, "n1"), ready("10.244.1.3", 8080, "n1"), ready("10.244.2.2", 8080, "n2")))},
			wantPorts:  map[servicecache.ServiceKey]uint16{svcA: 30001},
			wantCounts: map[servicecache.ServiceKey]int{svcA: 2},
		},
		{
			name: "no local endpoint: port listed, count absent",
			node: "n1",
			services: []*servicecache.Service{shLocalLB(svcA, 30001, shPort("http",
				ready("10.244.2.2", 8080, "n2")))},
			wantPorts:  map[servicecache.ServiceKey]uint16{svcA: 30001},
			wantCounts: map[servicecache.ServiceKey]int{},
		},
		{
			name: "only ready counts: serving-terminating and not-ready do not (as upstream)",
			node: "n1",
			services: []*servicecache.Service{shLocalLB(svcA, 30001, shPort("http",
				shEP("10.244.1.2", 8080, "n1", true, true, false),
				shEP("10.244.1.3", 8080, "n1", false, true, true),
				shEP("10.244.1.4", 8080, "n1", false, false, true),
				shEP("10.244.1.5", 8080, "n1", false, false, false)))},
			wantPorts:  map[servicecache.ServiceKey]uint16{svcA: 30001},
			wantCounts: map[servicecache.ServiceKey]int{svcA: 1},
		},
		{
			name: "only terminating local endpoints: zero",
			node: "n1",
			services: []*servicecache.Service{shLocalLB(svcA, 30001, shPort("http",
				shEP("10.244.1.3", 8080, "n1", false, true, true)))},
			wantPorts:  map[servicecache.ServiceKey]uint16{svcA: 30001},
			wantCounts: map[servicecache.ServiceKey]int{},
		},
		{
			name: "an address behind several ports counts once",
			node: "n1",
			services: []*servicecache.Service{shLocalLB(svcA, 30001,
				shPort("http", ready("10.244.1.2", 8080, "n1"), ready("10.244.1.3", 8080, "n1")),
				shPort("https", ready("10.244.1.2", 8443, "n1")),
			)},
			wantPorts:  map[servicecache.ServiceKey]uint16{svcA: 30001},
			wantCounts: map[servicecache.ServiceKey]int{svcA: 2},
		},
		{
			name: "dual-stack pods count once, the larger family wins",
			node: "n1",
			services: []*servicecache.Service{shLocalLB(svcA, 30001, shPort("http",
				ready("10.244.1.2", 8080, "n1"), ready("10.244.1.3", 8080, "n1"),
				ready("fd00::2", 8080, "n1"), ready("fd00::3", 8080, "n1"), ready("fd00::4", 8080, "n1")))},
			wantPorts:  map[servicecache.ServiceKey]uint16{svcA: 30001},
			wantCounts: map[servicecache.ServiceKey]int{svcA: 3},
		},
		{
			name: "Services without a health check port, or Cluster policy, or no ports are skipped",
			node: "n1",
			services: []*servicecache.Service{
				shLocalLB(svcA, 0, shPort("http", ready("10.244.1.2", 8080, "n1"))),
				{Key: svcB, Type: v1.ServiceTypeLoadBalancer, HealthCheckNodePort: 30002,
					Ports: []servicecache.ServicePort{shPort("http", ready("10.244.1.2", 8080, "n1"))}},
				shLocalLB(svcC, 30003),
			},
			wantPorts:  map[servicecache.ServiceKey]uint16{},
			wantCounts: map[servicecache.ServiceKey]int{},
		},
		{
			name: "several Services",
			node: "n1",
			services: []*servicecache.Service{
				shLocalLB(svcA, 30001, shPort("http", ready("10.244.1.2", 8080, "n1"))),
				shLocalLB(svcB, 30002, shPort("dns", ready("10.244.1.7", 53, "n1"), ready("10.244.1.8", 53, "n1"))),
			},
			wantPorts:  map[servicecache.ServiceKey]uint16{svcA: 30001, svcB: 30002},
			wantCounts: map[servicecache.ServiceKey]int{svcA: 1, svcB: 2},
		},
		{
			name: "unknown node name: nothing is local",
			node: "",
			services: []*servicecache.Service{shLocalLB(svcA, 30001, shPort("http",
				ready("10.244.1.2", 8080, "")))},
			wantPorts:  map[servicecache.ServiceKey]uint16{svcA: 30001},
			wantCounts: map[servicecache.ServiceKey]int{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := &servicecache.Snapshot{Services: tc.services, Node: servicecache.Node{Name: tc.node}}
			ports, counts := LocalEndpointCounts(snap)
			if !maps.Equal(ports, tc.wantPorts) {
				t.Errorf("ports = %v, want %v", ports, tc.wantPorts)
			}
			if !maps.Equal(counts, tc.wantCounts) {
				t.Errorf("counts = %v, want %v", counts, tc.wantCounts)
			}
		})
	}
	if p, c := LocalEndpointCounts(nil); len(p) != 0 || len(c) != 0 {
		t.Errorf("nil snapshot: %v %v", p, c)
	}
}

// upstreamBody is kube-proxy's body, written the way it writes it.
func upstreamBody(ns, name string, n int, healthy bool) string {
	return fmt.Sprintf("{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		ns, name, n, healthy)
}

func TestServiceHealthHandler(t *testing.T) {
	tests := []struct {
		name      string
		open      bool
		endpoints int
		healthy   bool
		wantCode  int
	}{
		{name: "local endpoints and healthy proxy", open: true, endpoints: 3, healthy: true, wantCode: http.StatusOK},
		{name: "one local endpoint", open: true, endpoints: 1, healthy: true, wantCode: http.StatusOK},
		{name: "no local endpoint", open: true, endpoints: 0, healthy: true, wantCode: http.StatusServiceUnavailable},
		{name: "unhealthy proxy", open: true, endpoints: 2, healthy: false, wantCode: http.StatusServiceUnavailable},
		{name: "port being closed", open: false, endpoints: 0, healthy: true, wantCode: http.StatusServiceUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newServiceHealthServer("n1", nil, func() bool { return tc.healthy }, nil)
			if tc.open {
				hs.services[svcA] = &hcInstance{key: svcA, port: 30001, endpoints: tc.endpoints}
			}
			rec := httptest.NewRecorder()
			hcHandler{key: svcA, hs: hs}.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
			res := rec.Result()
			if res.StatusCode != tc.wantCode {
				t.Errorf("status = %d, want %d", res.StatusCode, tc.wantCode)
			}
			wantHeaders := map[string]string{
				"Content-Type":                     "application/json",
				"X-Content-Type-Options":           "nosniff",
				"X-Load-Balancing-Endpoint-Weight": strconv.Itoa(tc.endpoints),
			}
			for h, want := range wantHeaders {
				if got := res.Header.Get(h); got != want {
					t.Errorf("header %s = %q, want %q", h, got, want)
				}
			}
			if got, want := rec.Body.String(), upstreamBody("ns", "a", tc.endpoints, tc.healthy); got != want {
				t.Errorf("body =\n%s\nwant\n%s", got, want)
			}
		})
	}
}

func TestNilProxyHealthIsHealthy(t *testing.T) {
	hs := newServiceHealthServer("n1", nil, nil, nil)
	hs.services[svcA] = &hcInstance{key: svcA, port: 30001, endpoints: 1}
	rec := httptest.NewRecorder()
	hcHandler{key: svcA, hs: hs}.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("status = %d, want 200", rec.Code)
	}
}

func TestListenAddrs(t *testing.T) {
	tests := []struct {
		name  string
		addrs []netip.Addr
		want  [][2]string
	}{
		{name: "all addresses", want: [][2]string{{"tcp", ":30001"}}},
		{
			name:  "given addresses, per family",
			addrs: []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("fd00::11"), netip.MustParseAddr("::ffff:10.0.0.1")},
			want:  [][2]string{{"tcp4", "172.30.0.11:30001"}, {"tcp6", "[fd00::11]:30001"}, {"tcp4", "10.0.0.1:30001"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newServiceHealthServer("n1", tc.addrs, nil, nil)
			if got := hs.listenAddrs(30001); !slices.Equal(got, tc.want) {
				t.Errorf("listenAddrs = %v, want %v", got, tc.want)
			}
		})
	}
}

// fakeListen opens a real loopback listener on a random port for every
// requested address, so that tests can talk HTTP to it, and fails the
// addresses in fail.
type fakeListen struct {
	mu     sync.Mutex
	fail   map[string]error             // requested address → error
	opened map[string]*closeRecordingLn // requested address → last listener
	calls  []string                     // "network address" of each call
}

type closeRecordingLn struct {
	net.Listener
	closed atomic.Bool
}

func (l *closeRecordingLn) Close() error {
	l.closed.Store(true)
	return l.Listener.Close()
}

func newFakeListen() *fakeListen {
	return &fakeListen{fail: map[string]error{}, opened: map[string]*closeRecordingLn{}}
}

func (f *fakeListen) listen(ctx context.Context, network, address string) (net.Listener, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, network+" "+address)
	if err := f.fail[address]; err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rl := &closeRecordingLn{Listener: ln}
	f.opened[address] = rl
	return rl, nil
}

// url returns the URL of the real listener behind a requested address.
func (f *fakeListen) url(t *testing.T, address string) string {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	ln := f.opened[address]
	if ln == nil {
		t.Fatalf("%s was never opened", address)
	}
	return "http://" + ln.Addr().String() + "/"
}

func (f *fakeListen) isClosed(address string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	ln := f.opened[address]
	return ln != nil && ln.closed.Load()
}

func (f *fakeListen) setFail(address string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, address)
	} else {
		f.fail[address] = err
	}
}

func (f *fakeListen) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	slices.Sort(c)
	return c
}

var shClient = &http.Client{Timeout: 5 * time.Second}

// get returns the status code, the weight header and body of url.
func get(t *testing.T, url string) (int, string, string) {
	t.Helper()
	res, err := shClient.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", url, err)
	}
	return res.StatusCode, res.Header.Get("X-Load-Balancing-Endpoint-Weight"), string(body)
}

func refused(url string) bool {
	res, err := shClient.Get(url)
	if err == nil {
		res.Body.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

func TestSyncServicesAndEndpoints(t *testing.T) {
	fl := newFakeListen()
	var healthy atomic.Bool
	healthy.Store(true)
	hs := newServiceHealthServer("n1", []netip.Addr{netip.MustParseAddr("172.30.0.11")}, healthy.Load, fl.listen)
	t.Cleanup(hs.Close)

	// a opens; b's port is taken by someone else: logged, a unaffected.
	fl.setFail("172.30.0.11:30002", fmt.Errorf("listen tcp4 172.30.0.11:30002: %w", syscall.EADDRINUSE))
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: 30001, svcB: 30002})
	if got, want := fl.takeCalls(), []string{"tcp4 172.30.0.11:30001", "tcp4 172.30.0.11:30002"}; !slices.Equal(got, want) {
		t.Fatalf("listen calls = %v, want %v", got, want)
	}
	urlA := fl.url(t, "172.30.0.11:30001")
	if code, w, body := get(t, urlA); code != http.StatusServiceUnavailable || w != "0" || body != upstreamBody("ns", "a", 0, true) {
		t.Errorf("a before endpoints: %d weight %s body %s", code, w, body)
	}

	// Endpoints: a has 2; b (not open) and c (no health check) are ignored.
	hs.SyncEndpoints(map[servicecache.ServiceKey]int{svcA: 2, svcB: 1, svcC: 4})
	if code, w, body := get(t, urlA); code != http.StatusOK || w != "2" || body != upstreamBody("ns", "a", 2, true) {
		t.Errorf("a with endpoints: %d weight %s body %s", code, w, body)
	}

	// The proxy turns unhealthy: 503 with the count still reported.
	healthy.Store(false)
	if code, w, body := get(t, urlA); code != http.StatusServiceUnavailable || w != "2" || body != upstreamBody("ns", "a", 2, false) {
		t.Errorf("a with unhealthy proxy: %d weight %s body %s", code, w, body)
	}
	healthy.Store(true)

	// Same input again: a is left alone, b is retried and still fails.
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: 30001, svcB: 30002})
	if got, want := fl.takeCalls(), []string{"tcp4 172.30.0.11:30002"}; !slices.Equal(got, want) {
		t.Fatalf("listen calls = %v, want %v (only the failed port retried)", got, want)
	}

	// The port is freed: b opens on the next sync, with the count it was
	// given before it could open.
	fl.setFail("172.30.0.11:30002", nil)
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: 30001, svcB: 30002})
	if got, want := fl.takeCalls(), []string{"tcp4 172.30.0.11:30002"}; !slices.Equal(got, want) {
		t.Fatalf("listen calls = %v, want %v", got, want)
	}
	urlB := fl.url(t, "172.30.0.11:30002")
	if code, w, body := get(t, urlB); code != http.StatusOK || w != "1" || body != upstreamBody("ns", "b", 1, true) {
		t.Errorf("b after retry: %d weight %s body %s", code, w, body)
	}

	// a's endpoints go away (absent from the map): 503.
	hs.SyncEndpoints(map[servicecache.ServiceKey]int{svcB: 1})
	if code, w, _ := get(t, urlA); code != http.StatusServiceUnavailable || w != "0" {
		t.Errorf("a without endpoints: %d weight %s", code, w)
	}

	// a moves to another port: the old one closes, the new one opens.
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: 30011, svcB: 30002})
	if got, want := fl.takeCalls(), []string{"tcp4 172.30.0.11:30011"}; !slices.Equal(got, want) {
		t.Fatalf("listen calls = %v, want %v", got, want)
	}
	if !fl.isClosed("172.30.0.11:30001") || !refused(urlA) {
		t.Errorf("a's old port is still open")
	}
	if code, _, _ := get(t, fl.url(t, "172.30.0.11:30011")); code != http.StatusServiceUnavailable {
		t.Errorf("a's new port: %d", code)
	}

	// b is gone: closed.
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: 30011})
	if got := fl.takeCalls(); len(got) != 0 {
		t.Fatalf("listen calls = %v, want none", got)
	}
	if !fl.isClosed("172.30.0.11:30002") || !refused(urlB) {
		t.Errorf("b's port is still open")
	}
	if fl.isClosed("172.30.0.11:30011") {
		t.Errorf("a's port was closed")
	}

	hs.Close()
	if !fl.isClosed("172.30.0.11:30011") {
		t.Errorf("Close left a's port open")
	}
}

// With several addresses, a port that fails on one of them closes the
// others, so that the next sync retries it from scratch.
func TestSyncServicesPartialFailureClosesOpened(t *testing.T) {
	fl := newFakeListen()
	hs := newServiceHealthServer("n1", []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("fd00::11")}, nil, fl.listen)
	t.Cleanup(hs.Close)
	fl.setFail("[fd00::11]:30001", syscall.EADDRINUSE)
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: 30001})
	if got, want := fl.takeCalls(), []string{"tcp4 172.30.0.11:30001", "tcp6 [fd00::11]:30001"}; !slices.Equal(got, want) {
		t.Fatalf("listen calls = %v, want %v", got, want)
	}
	if !fl.isClosed("172.30.0.11:30001") {
		t.Errorf("the IPv4 listener was left open after the IPv6 one failed")
	}
	fl.setFail("[fd00::11]:30001", nil)
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: 30001})
	if got, want := fl.takeCalls(), []string{"tcp4 172.30.0.11:30001", "tcp6 [fd00::11]:30001"}; !slices.Equal(got, want) {
		t.Fatalf("retry listen calls = %v, want %v", got, want)
	}
	hs.SyncEndpoints(map[servicecache.ServiceKey]int{svcA: 1})
	for _, a := range []string{"172.30.0.11:30001", "[fd00::11]:30001"} {
		if code, _, _ := get(t, fl.url(t, a)); code != http.StatusOK {
			t.Errorf("%s: %d", a, code)
		}
	}
}

// The production listener on real loopback ports: a port held by another
// socket fails alone and opens once it is free.
func TestSyncServicesRealListeners(t *testing.T) {
	// Two free ports; the second stays held to make its bind fail.
	free, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	portA := uint16(free.Addr().(*net.TCPAddr).Port)
	free.Close()
	held, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	portB := uint16(held.Addr().(*net.TCPAddr).Port)
	defer held.Close()

	hs := NewServiceHealthServer("n1", []netip.Addr{netip.MustParseAddr("127.0.0.1")}, func() bool { return true })
	t.Cleanup(hs.Close)
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: portA, svcB: portB})
	hs.SyncEndpoints(map[servicecache.ServiceKey]int{svcA: 1, svcB: 1})

	urlA := fmt.Sprintf("http://127.0.0.1:%d/healthz", portA)
	urlB := fmt.Sprintf("http://127.0.0.1:%d/", portB)
	if code, w, body := get(t, urlA); code != http.StatusOK || w != "1" || body != upstreamBody("ns", "a", 1, true) {
		t.Errorf("a: %d weight %s body %s", code, w, body)
	}
	hs.mu.RLock()
	_, bOpen := hs.services[svcB]
	failure := hs.failed[svcB]
	hs.mu.RUnlock()
	if bOpen || failure == "" {
		t.Fatalf("b opened on a held port (open %v, failure %q)", bOpen, failure)
	}

	held.Close()
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: portA, svcB: portB})
	if code, w, body := get(t, urlB); code != http.StatusOK || w != "1" || body != upstreamBody("ns", "b", 1, true) {
		t.Errorf("b after retry: %d weight %s body %s", code, w, body)
	}

	hs.SyncServices(nil)
	for _, u := range []string{urlA, urlB} {
		if !refused(u) {
			t.Errorf("%s still answers after its Service went away", u)
		}
	}
}

// SetAddresses moves the open ports to the new addresses, keeping their
// endpoint counts; the same addresses again change nothing.
func TestSetAddressesReopens(t *testing.T) {
	fl := newFakeListen()
	hs := newServiceHealthServer("n1", nil, nil, fl.listen)
	t.Cleanup(hs.Close)
	hs.SyncServices(map[servicecache.ServiceKey]uint16{svcA: 30001})
	hs.SyncEndpoints(map[servicecache.ServiceKey]int{svcA: 2})
	if got, want := fl.takeCalls(), []string{"tcp :30001"}; !slices.Equal(got, want) {
		t.Fatalf("listen calls = %v, want %v", got, want)
	}

	tests := []struct {
		name  string
		addrs []netip.Addr
		all   bool
		want  []string
	}{
		{name: "node addresses", addrs: []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("::")},
			want: []string{"tcp4 172.30.0.11:30001", "tcp6 [::]:30001"}},
		{name: "same again", addrs: []netip.Addr{netip.MustParseAddr("172.30.0.11"), netip.MustParseAddr("::")}},
		{name: "another address", addrs: []netip.Addr{netip.MustParseAddr("172.30.0.12")}, want: []string{"tcp4 172.30.0.12:30001"}},
		{name: "nowhere", addrs: nil},
		{name: "all", all: true, want: []string{"tcp :30001"}},
	}
	for _, tc := range tests {
		hs.SetAddresses(tc.addrs, tc.all)
		if got := fl.takeCalls(); !slices.Equal(got, tc.want) {
			t.Errorf("%s: listen calls = %v, want %v", tc.name, got, tc.want)
		}
	}
	if !fl.isClosed("172.30.0.12:30001") {
		t.Error("the port on the old address is still open")
	}
	if code, w, _ := get(t, fl.url(t, ":30001")); code != http.StatusOK || w != "2" {
		t.Errorf("reopened port: %d weight %s, want 200 with 2 endpoints", code, w)
	}
}
