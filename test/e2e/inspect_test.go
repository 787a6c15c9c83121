//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// inspectJSON is the part of `kube-ipvs-proxy inspect --json` the case
// reads (pkg/inspect/doc.go has the schema).
type inspectJSON struct {
	Version        int  `json:"version"`
	KernelOnly     bool `json:"kernelOnly"`
	VirtualServers []struct {
		Protocol string `json:"protocol"`
		Address  string `json:"address"`
		Port     int    `json:"port"`
		Services []struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
			Kind      string `json:"kind"`
		} `json:"services"`
		RealServers []struct {
			Address  string `json:"address"`
			Weight   int    `json:"weight"`
			Draining bool   `json:"draining"`
			Endpoint *struct {
				TargetRef *struct {
					Name string `json:"name"`
				} `json:"targetRef"`
			} `json:"endpoint"`
		} `json:"realServers"`
	} `json:"virtualServers"`
}

// `kube-ipvs-proxy inspect` on a node names the Service of each virtual
// server and the pod of each real server, whichever proxy programmed the
// kernel, and marks another tool's virtual server as not a Service.
func TestInspect(t *testing.T) {
	const (
		node    = "node1"
		foreign = "192.0.2.90:9999"
	)
	app := newEchoApp(t, "e2e-inspect", 2)
	bin := filepath.Join(lab.Repo, "_output", "bin", "kube-ipvs-proxy") // the host's, through the VM's 9p root
	kubeconfig := "--kubeconfig=/run/lab/" + node + ".kubeconfig"
	t.Cleanup(func() { _, _ = lab.Output(context.Background(), node, "ipvsadm", "-D", "-t", foreign) })
	nodeOutput(t, node, "ipvsadm", "-A", "-t", foreign, "-s", "rr")

	out := nodeOutput(t, node, bin, "inspect", "--json", kubeconfig)
	var rep inspectJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("step: inspect --json: %v\n%s", err, out)
	}
	if rep.Version != 1 || rep.KernelOnly {
		t.Fatalf("step: inspect --json: version %d kernelOnly %v, want 1 false", rep.Version, rep.KernelOnly)
	}
	kinds := map[string]bool{}
	sawForeign := false
	for _, vs := range rep.VirtualServers {
		addr := fmt.Sprintf("%s:%d", vs.Address, vs.Port)
		if addr == foreign {
			sawForeign = true
			if len(vs.Services) != 0 {
				t.Errorf("step: %s (another tool's) is named as %v", addr, vs.Services)
			}
			continue
		}
		mine := slices.ContainsFunc(vs.Services, func(s struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
			Kind      string `json:"kind"`
		}) bool {
			if s.Namespace == app.ns && s.Name == app.name {
				kinds[vs.Protocol+" "+s.Kind] = true
				return true
			}
			return false
		})
		if !mine {
			continue
		}
		var pods, ips []string
		for _, rs := range vs.RealServers {
			ips = append(ips, rs.Address)
			if rs.Endpoint != nil && rs.Endpoint.TargetRef != nil {
				pods = append(pods, rs.Endpoint.TargetRef.Name)
			}
			if rs.Weight != 1 || rs.Draining {
				t.Errorf("step: %s real server %s: weight %d draining %v", addr, rs.Address, rs.Weight, rs.Draining)
			}
		}
		slices.Sort(pods)
		slices.Sort(ips)
		if !slices.Equal(pods, app.podNames()) || !slices.Equal(ips, app.podIPs()) {
			t.Errorf("step: %s: real servers %v (pods %v), want %v (pods %v)", addr, ips, pods, app.podIPs(), app.podNames())
		}
	}
	for _, k := range []string{"TCP ClusterIP", "UDP ClusterIP", "TCP NodePort", "UDP NodePort"} {
		if !kinds[k] {
			t.Errorf("step: inspect names no %s virtual server of %s/%s (saw %v)", k, app.ns, app.name, kinds)
		}
	}
	if !sawForeign {
		t.Errorf("step: inspect lists no %s", foreign)
	}

	text := nodeOutput(t, node, bin, "inspect", kubeconfig)
	if !strings.Contains(text, app.ns+"/"+app.name+":http (ClusterIP)") || !strings.Contains(text, "(not a Service)") {
		t.Errorf("step: inspect's table lacks the Service or the foreign mark:\n%s", text)
	}
	t.Logf("inspect on %s:\n%s", node, text)
}
