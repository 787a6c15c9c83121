package proxy

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// TestExternalLocalMarks: an externalTrafficPolicy: Local Service whose
// endpoints are on other nodes gets a firewall-mark virtual server with
// them, and its node port is listed with that mark in
// KUBE-EXTERNAL-LOCAL-MARK; an incremental sync keeps the mark, and the
// Cluster policy removes both.
func TestExternalLocalMarks(t *testing.T) {
	f := newFixture()
	local := func(policyLocal bool, endpoints ...string) *servicecache.Service {
		s := web(endpoints...)
		s.ExternalPolicyLocal = policyLocal
		for i := range s.Ports[0].Endpoints {
			s.Ports[0].Endpoints[i].NodeName = "node2"
		}
		return s
	}
	sync := func(full bool, svc *servicecache.Service) {
		t.Helper()
		f.snaps.queue = []*servicecache.Snapshot{{Services: []*servicecache.Service{svc}, Node: node, Changed: []servicecache.ServiceKey{svc.Key}}}
		if err := f.p.Sync(context.Background(), full); err != nil {
			t.Fatal(err)
		}
	}
	marks := func() []iptables.Entry {
		t.Helper()
		set := f.ipset.Sets["KUBE-EXTERNAL-LOCAL-MARK"]
		if set == nil {
			t.Fatal("KUBE-EXTERNAL-LOCAL-MARK was not created")
		}
		var out []iptables.Entry
		for e := range set.Entries {
			out = append(out, e)
		}
		return out
	}

	sync(true, local(true, "10.244.2.2", "10.244.2.3"))
	mark := ipvs.ServiceMark(servicecache.ServiceKey{Namespace: "default", Name: "web"}, "http", ipvs.ProtoTCP)
	kernel := f.kernel(t)
	if !strings.HasSuffix(kernel, "-A -t 172.30.0.11:30080 -s rr\n") {
		t.Fatalf("the node port has real servers:\n%s", kernel)
	}
	for _, want := range []string{
		"-A -t 172.30.0.11:30080 -s rr\n", // the Local virtual server: no real server here (last)
		"-a -f " + itoa(mark) + " -r 10.244.2.2:8080 -m -w 1\n-a -f " + itoa(mark) + " -r 10.244.2.3:8080 -m -w 1\n",
	} {
		if !strings.Contains(kernel, want) {
			t.Fatalf("kernel lacks %q:\n%s", want, kernel)
		}
	}
	want := iptables.Entry{IP: netip.MustParseAddr("172.30.0.11"), Proto: iptables.ProtoTCP, Port: 30080, SkbMark: mark, SkbMarkMask: ipvs.FWMarkMask}
	if got := marks(); len(got) != 1 || got[0] != want {
		t.Fatalf("KUBE-EXTERNAL-LOCAL-MARK holds %v, want %v", got, want)
	}

	// An endpoint goes: the mark stays, the firewall-mark server follows.
	sync(false, local(true, "10.244.2.2"))
	if got := marks(); len(got) != 1 || got[0] != want {
		t.Fatalf("after an incremental sync KUBE-EXTERNAL-LOCAL-MARK holds %v, want %v", got, want)
	}
	if kernel := f.kernel(t); strings.Contains(kernel, "10.244.2.3") || !strings.Contains(kernel, "-a -f "+itoa(mark)+" -r 10.244.2.2:8080") {
		t.Fatalf("kernel after the endpoint went:\n%s", kernel)
	}

	// Cluster policy: every client gets every endpoint, nothing to mark.
	sync(false, local(false, "10.244.2.2"))
	if got := marks(); len(got) != 0 {
		t.Fatalf("KUBE-EXTERNAL-LOCAL-MARK still holds %v", got)
	}
	if kernel := f.kernel(t); strings.Contains(kernel, "-f ") {
		t.Fatalf("a firewall-mark server is left:\n%s", kernel)
	}
}

func itoa(u uint32) string { return strconv.FormatUint(uint64(u), 10) }
