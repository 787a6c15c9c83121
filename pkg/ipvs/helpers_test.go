package ipvs

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func ips(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = ip(s)
	}
	return out
}

// ep builds an endpoint; state is "ready", "terminating" (serving and
// terminating), "gone" (terminating, not serving) or "unready".
func ep(addr string, port uint16, state string) servicecache.Endpoint {
	e := servicecache.Endpoint{Addr: ip(addr), Port: port, NodeName: "node-a"}
	switch state {
	case "ready":
		e.Ready, e.Serving = true, true
	case "terminating":
		e.Serving, e.Terminating = true, true
	case "gone":
		e.Terminating = true
	case "unready":
	default:
		panic("unknown endpoint state " + state)
	}
	return e
}

func port(name string, proto v1.Protocol, p, nodePort uint16, eps ...servicecache.Endpoint) servicecache.ServicePort {
	return servicecache.ServicePort{Name: name, Protocol: proto, Port: p, NodePort: nodePort, Endpoints: eps}
}

func svc(ns, name string, clusterIPs []netip.Addr, ports ...servicecache.ServicePort) *servicecache.Service {
	typ := v1.ServiceTypeClusterIP
	for _, p := range ports {
		if p.NodePort != 0 {
			typ = v1.ServiceTypeNodePort
		}
	}
	return &servicecache.Service{
		Key:        servicecache.ServiceKey{Namespace: ns, Name: name},
		Type:       typ,
		ClusterIPs: clusterIPs,
		Ports:      ports,
	}
}

// snapshot sorts the services by key, as the service cache does.
func snapshot(svcs ...*servicecache.Service) *servicecache.Snapshot {
	slices.SortFunc(svcs, func(a, b *servicecache.Service) int { return a.Key.Compare(b.Key) })
	return &servicecache.Snapshot{Services: svcs}
}

func key(ns, name string) servicecache.ServiceKey {
	return servicecache.ServiceKey{Namespace: ns, Name: name}
}

// golden compares got with testdata/name.golden, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./pkg/ipvs -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
