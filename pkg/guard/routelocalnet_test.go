package guard

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/sysctl"
)

// route_localnet lets packets to 127.0.0.0/8 be routed off the loopback
// interface. Upstream kube-proxy sets it for NodePorts on localhost, which
// exposed services bound to localhost to the node's neighbours
// (CVE-2020-8558). This proxy never sets it: these tests fail if the
// sysctls it sets at start, or any of its code, ever do.

const routeLocalnet = "route_localnet"

func TestSysctlsNeverSetRouteLocalnet(t *testing.T) {
	values := map[string]int{
		sysctl.VSConnTrack: 0, sysctl.VSConnReuseMode: 1, sysctl.VSExpireNoDestConn: 0, sysctl.VSExpireQuiescentTmpl: 0,
		sysctl.IPForward: 0, sysctl.ARPIgnore: 0, sysctl.ARPAnnounce: 0, sysctl.BridgeNFCallIPTables: 1,
		sysctl.ConntrackMax: 0, sysctl.ConntrackTCPTimeoutEstablished: 0, sysctl.ConntrackTCPTimeoutCloseWait: 0,
		sysctl.ConntrackTCPBeLiberal: 0, sysctl.ConntrackUDPTimeout: 0, sysctl.ConntrackUDPTimeoutStream: 0,
		"net/ipv4/conf/all/" + routeLocalnet: 0, "net/ipv4/conf/default/" + routeLocalnet: 0,
		"net/ipv4/conf/kube-ipvs0/" + routeLocalnet: 0,
	}
	s := sysctl.NewFake(values, "4.19.0")
	// Every option on, on an old kernel: the most the proxy ever writes.
	if err := sysctl.EnsureIPVSSysctls(s, sysctl.IPVSOptions{StrictARP: true}); err != nil {
		t.Fatal(err)
	}
	if err := sysctl.EnsureConntrackSysctls(s, sysctl.ConntrackOptions{TCPEstablishedTimeout: time.Hour, TCPCloseWaitTimeout: time.Hour,
		TCPBeLiberal: true, UDPTimeout: time.Minute, UDPStreamTimeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	sets := s.Sets()
	if len(sets) < 5 {
		t.Fatalf("only %v written: the test no longer covers what the proxy sets", sets)
	}
	for _, set := range sets {
		if strings.Contains(set, routeLocalnet) {
			t.Errorf("%s written", set)
		}
	}
}

// No source file of the proxy (tests and the lab aside) names the sysctl.
func TestNoCodeSetsRouteLocalnet(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found: %v", err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "test" || strings.HasPrefix(d.Name(), ".") || d.Name() == "_output" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, ".yaml") && !strings.HasSuffix(path, ".sh") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		checked++
		if strings.Contains(strings.ToLower(string(data)), routeLocalnet) {
			t.Errorf("%s names %s", rel, routeLocalnet)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Errorf("only %d files checked", checked)
	}
}
