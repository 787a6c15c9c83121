//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// rbacDocs returns the ServiceAccount, ClusterRole and ClusterRoleBinding
// documents of the repository's manifests.
func rbacDocs(t *testing.T) (docs []byte, saNamespace, saName string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(lab.Repo, "manifests", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests found (err %v)", err)
	}
	var out bytes.Buffer
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---") {
			var meta struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name      string `json:"name"`
					Namespace string `json:"namespace"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			switch meta.Kind {
			case "ServiceAccount":
				saNamespace, saName = meta.Metadata.Namespace, meta.Metadata.Name
			case "ClusterRole", "ClusterRoleBinding":
			default:
				continue
			}
			out.WriteString("---\n" + strings.TrimPrefix(doc, "\n") + "\n")
		}
	}
	if saName == "" {
		t.Fatal("the manifests have no ServiceAccount")
	}
	return out.Bytes(), saNamespace, saName
}

// The proxy runs with exactly the RBAC of the manifests (least privilege:
// read Services, EndpointSlices and Nodes, write Events): node1's proxy
// gets a token of the manifests' ServiceAccount, programs a new Service,
// records its Event, and is never refused by the API server.
func TestLeastPrivilegeRBAC(t *testing.T) {
	const node = "node1"
	ctx := context.Background()
	docs, ns, sa := rbacDocs(t)
	apply := exec.CommandContext(ctx, lab.KubectlPath(), "--kubeconfig="+lab.Kubeconfig(), "apply", "-f", "-")
	apply.Stdin = bytes.NewReader(docs)
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("step: kubectl apply of the manifests' RBAC: %v\n%s", err, out)
	}
	tok, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: a token for %s/%s: %v", ns, sa, err)
	}
	kubeconfig := "/run/lab/" + node + "-rbac.kubeconfig"
	nodeOutput(t, "vm", "sh", "-c", "sed 's/^\\( *token:\\).*/\\1 "+tok.Status.Token+"/' /run/lab/"+node+".kubeconfig > "+kubeconfig)
	logSize := len(nodeOutput(t, "vm", "cat", labctl.ProxyLogPath(node)))
	lcRestartProxies(t, []string{node}, []string{"--kubeconfig=" + kubeconfig}, nil)

	app := newEchoApp(t, "e2e-rbac", 2)
	// An unknown scheduler: ours records an Event with the manifest's RBAC.
	lcUpdateService(t, app, "annotating the Service with an unknown scheduler", func(s *v1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations["ipvs.kube-ipvs-proxy.io/scheduler"] = "bogus"
	})
	lcSentinel(t, app.ns, "the proxies saw the annotation")
	requireAnsweredBy(t, "step: "+node+" -> the new Service", request(t, node, "tcp", app.clusterIP()+":80", 4), app.podNames())
	time.Sleep(2 * time.Second) // events are written asynchronously
	log := nodeOutput(t, "vm", "cat", labctl.ProxyLogPath(node))
	if len(log) > logSize {
		log = log[logSize:]
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "forbidden") || strings.Contains(l, "Forbidden") {
			t.Errorf("step: the proxy with the manifests' RBAC was refused: %s", l)
		}
	}
}

// serviceEvent waits for a Warning Event with reason on Service ns/name.
func serviceEvent(t *testing.T, ns, name, reason string) string {
	t.Helper()
	var note string
	lcEventually(t, "a Warning Event "+reason+" on "+ns+"/"+name, propagateTimeout, func() (bool, string) {
		evs, err := cs.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range evs.Items {
			if e.Type == v1.EventTypeWarning && e.Reason == reason && e.Regarding.Name == name {
				note = e.Note
				return true, ""
			}
			seen = append(seen, e.Reason+" on "+e.Regarding.Name)
		}
		return false, fmt.Sprintf("events: %q", seen)
	})
	return note
}

// Addresses a Service must not be able to take over (CVE-2020-8554 and
// CVE-2021-25740 classes): an external IP that is the node's own address,
// and an endpoint that is another Service's cluster IP. Ours refuses both,
// with a Warning Event on the Service, and programs the rest; upstream
// kube-proxy programs them.
func TestAddressGuard(t *testing.T) {
	ctx := context.Background()
	nodeIP := labctl.NodeAddr(1).String()
	app := newExtApp(t, "e2e-guard", 1, "", map[string]func(*v1.Service){
		"echo": nil,
		"ext": func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeClusterIP
			for i := range s.Spec.Ports {
				s.Spec.Ports[i].NodePort = 0
			}
			s.Spec.ExternalIPs = []string{nodeIP, extGuardIP}
		},
	})
	// node2 programs node1's address like any external IP (each proxy
	// knows its own Node only), and with it bound on node2's kube-ipvs0,
	// node2 answers packets meant for node1 itself: remove the Service and
	// wait until it is gone everywhere before the next test runs.
	t.Cleanup(func() {
		err := cs.CoreV1().Services(app.ns).Delete(context.Background(), "ext", metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("cleanup: deleting Service ext: %v", err)
			return
		}
		for _, n := range lab.NodeNames() {
			extWaitBound(t, n, nodeIP, false)
			extWaitBound(t, n, extGuardIP, false)
		}
	})
	target := app.svcs["echo"].Spec.ClusterIP
	// A Service whose only endpoint is another Service's cluster IP.
	vipep := labctl.EchoService(app.ns, "vipep")
	vipep.Spec.Type, vipep.Spec.Selector = v1.ServiceTypeClusterIP, nil
	for i := range vipep.Spec.Ports {
		vipep.Spec.Ports[i].NodePort = 0
	}
	vipep, err := cs.CoreV1().Services(app.ns).Create(ctx, vipep, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating Service vipep: %v", err)
	}
	_, err = cs.DiscoveryV1().EndpointSlices(app.ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "vipep-1", Labels: map[string]string{discoveryv1.LabelServiceName: "vipep"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{target}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](80)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: creating the EndpointSlice of vipep: %v", err)
	}

	// The acceptable external IP is programmed in both cases.
	extWaitVS(t, "node1", "TCP", extGuardIP+":80", app.podIPs())
	if lab.Proxy == "upstream" {
		extWaitVS(t, "node1", "TCP", nodeIP+":80", app.podIPs())
		extWaitVS(t, "node1", "TCP", vipep.Spec.ClusterIP+":80", []string{target})
		t.Logf("upstream programs an external IP that is the node's address and an endpoint that is a cluster IP")
		return
	}
	extWaitVS(t, "node1", "TCP", vipep.Spec.ClusterIP+":80", []string{})
	lcSentinel(t, app.ns, "the proxies saw both Services")
	// node1 refuses its own address (each proxy knows its own Node only;
	// on node2 it is just another address, as for any router).
	// ipvsadm fails with "No such service" when it is absent.
	if out, err := lab.Output(ctx, "node1", "ipvsadm", "-Ln", "-t", nodeIP+":80"); err == nil && strings.Contains(out, "TCP") {
		t.Errorf("step: node1 programs the refused external IP %s:80 (its own address):\n%s", nodeIP, out)
	}
	t.Logf("ExternalIPRefused: %s", serviceEvent(t, app.ns, "ext", "ExternalIPRefused"))
	t.Logf("EndpointAddressRefused: %s", serviceEvent(t, app.ns, "vipep", "EndpointAddressRefused"))
}
