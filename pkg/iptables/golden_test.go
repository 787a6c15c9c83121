package iptables

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
	v1 "k8s.io/api/core/v1"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// checkGolden compares got with testdata/name, or rewrites it with -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden (run with -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run with -update to accept):\n%s", path, lineDiff(string(want), got))
	}
}

// lineDiff lists lines only in want ("-") or only in got ("+"), in order;
// enough to see what moved without a diff library.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	count := func(lines []string) map[string]int {
		m := map[string]int{}
		for _, l := range lines {
			m[l]++
		}
		return m
	}
	wc, gc := count(w), count(g)
	var sb strings.Builder
	for _, l := range w {
		if gc[l] > 0 {
			gc[l]--
		} else {
			sb.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if wc[l] > 0 {
			wc[l]--
		} else {
			sb.WriteString("+ " + l + "\n")
		}
	}
	if sb.Len() == 0 {
		return "(same lines, different order)\n--- want\n" + want + "--- got\n" + got
	}
	return sb.String()
}

// largeSnapshot has n dual-stack services with one TCP NodePort and one
// local endpoint each.
func largeSnapshot(n int) *servicecache.Snapshot {
	snap := &servicecache.Snapshot{Node: servicecache.Node{Name: "node-a"}}
	for i := range n {
		hi, lo := byte(i>>8), byte(i)
		v4 := netip.AddrFrom4([4]byte{10, 100, hi, lo})
		v6 := netip.AddrFrom16([16]byte{0xfd, 0, 1, 0, 14: hi, 15: lo})
		ep4 := netip.AddrFrom4([4]byte{10, 244, hi, lo})
		ep6 := netip.AddrFrom16([16]byte{0xfd, 0, 2, 0x44, 14: hi, 15: lo})
		snap.Services = append(snap.Services, &servicecache.Service{
			Key:        servicecache.ServiceKey{Namespace: "load", Name: fmt.Sprintf("svc-%05d", i)},
			Type:       v1.ServiceTypeNodePort,
			ClusterIPs: []netip.Addr{v4, v6},
			Ports: []servicecache.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: uint16(20000 + i),
				Endpoints: []servicecache.Endpoint{
					{Addr: ep4, Port: 8080, NodeName: "node-a"},
					{Addr: ep6, Port: 8080, NodeName: "node-a"},
				}}},
		})
	}
	return snap
}
