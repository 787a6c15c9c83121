package labctl

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The control plane runs on host loopback: etcd, kube-apiserver (RBAC,
// token authentication), kube-controller-manager with the controllers the
// lab needs, and the lab's round-robin scheduler.

// controllers the real kube-controller-manager runs in the lab: EndpointSlices
// (with ready/serving/terminating conditions) come from the real controller.
const controllers = "deployment,replicaset,endpointslice,namespace,serviceaccount,garbagecollector"

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writeCredentials writes the token file, the service-account key pair and a
// kubeconfig for the host and for each node.
func (c Config) writeCredentials() error {
	if err := os.MkdirAll(c.path("pki"), 0o700); err != nil {
		return err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.path("pki", "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(c.path("pki", "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return err
	}
	// Every lab identity is a cluster admin: the lab tests proxies, not RBAC.
	var tokens strings.Builder
	admin := randomToken()
	fmt.Fprintf(&tokens, "%s,lab-admin,lab-admin,\"system:masters\"\n", admin)
	if err := c.writeKubeconfig(c.Kubeconfig(), fmt.Sprintf("https://127.0.0.1:%d", c.APIPort), admin); err != nil {
		return err
	}
	for _, n := range c.NodeNames() {
		t := randomToken()
		fmt.Fprintf(&tokens, "%s,lab-%s,lab-%s,\"system:masters\"\n", t, n, n)
		if err := c.writeKubeconfig(c.path(n+".kubeconfig"), fmt.Sprintf("https://%s:%d", APIServerGuestAddr, c.APIPort), t); err != nil {
			return err
		}
	}
	return os.WriteFile(c.path("pki", "tokens.csv"), []byte(tokens.String()), 0o600)
}

func (c Config) writeKubeconfig(path, server, token string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: lab
  user:
    token: %s
contexts:
- name: lab
  context: {cluster: lab, user: lab}
current-context: lab
`, server, token)
	return os.WriteFile(path, []byte(kc), 0o600)
}

func (c Config) startEtcd() error {
	url := fmt.Sprintf("http://127.0.0.1:%d", c.EtcdPort)
	return c.startHostProc("etcd", []string{"etcd",
		"--name=lab", "--data-dir=" + c.path("etcd"),
		"--listen-client-urls=" + url, "--advertise-client-urls=" + url,
		"--listen-peer-urls=http://127.0.0.1:" + strconv.Itoa(c.EtcdPort+1),
		"--initial-advertise-peer-urls=http://127.0.0.1:" + strconv.Itoa(c.EtcdPort+1),
		"--initial-cluster=lab=http://127.0.0.1:" + strconv.Itoa(c.EtcdPort+1),
		"--unsafe-no-fsync", "--quota-backend-bytes=4294967296",
	})
}

func (c Config) startAPIServer() error {
	return c.startHostProc("kube-apiserver", []string{c.toolBin("kube-apiserver"),
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", c.EtcdPort),
		fmt.Sprintf("--secure-port=%d", c.APIPort),
		"--bind-address=127.0.0.1",
		// Inside the VM the API server is at this address (guestfwd), so the
		// default/kubernetes Service points there.
		"--advertise-address=" + APIServerGuestAddr,
		"--cert-dir=" + c.path("pki"),
		// Dual-stack, IPv4 first: Services are IPv4 unless they ask for
		// IPv6 (ipFamilies, ipFamilyPolicy).
		"--service-cluster-ip-range=" + ServiceCIDRs,
		"--authorization-mode=RBAC",
		"--token-auth-file=" + c.path("pki", "tokens.csv"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + c.path("pki", "sa.pub"),
		"--service-account-signing-key-file=" + c.path("pki", "sa.key"),
		"--profiling=false",
		// Proxies run privileged, as kube-proxy does (the DaemonSet manifest).
		"--allow-privileged=true",
	})
}

func (c Config) startControllerManager() error {
	return c.startHostProc("kube-controller-manager", []string{c.toolBin("kube-controller-manager"),
		"--kubeconfig=" + c.Kubeconfig(),
		"--controllers=" + controllers,
		"--leader-elect=false",
		"--secure-port=0",
		"--concurrent-service-endpoint-syncs=10",
		"--concurrent-deployment-syncs=10",
		"--concurrent-replicaset-syncs=10",
	})
}

func (c Config) startScheduler() error {
	return c.startHostProc("scheduler", []string{c.ourBin("labkubelet"), "schedule",
		"--kubeconfig=" + c.Kubeconfig(), "--nodes=" + strings.Join(c.NodeNames(), ","),
	})
}

// waitAPIServer waits for /readyz.
func (c Config) waitAPIServer(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	url := fmt.Sprintf("https://127.0.0.1:%d/readyz", c.APIPort)
	return poll(ctx, 2*time.Minute, func() (bool, error) {
		if _, ok := c.hostProcPid("kube-apiserver"); !ok {
			return false, fmt.Errorf("kube-apiserver exited:\n%s", tailFile(c.LogFile("kube-apiserver"), 30))
		}
		resp, err := client.Get(url)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}, func() string { return "kube-apiserver not ready:\n" + tailFile(c.LogFile("kube-apiserver"), 30) })
}

// Client returns a clientset with the host's admin kubeconfig.
func (c Config) Client() (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 100, 200
	return kubernetes.NewForConfig(rc)
}

// registerNodes creates a Node object per lab node with its InternalIPs and
// pod CIDRs (IPv4, then IPv6), marked Ready.
func (c Config) registerNodes(ctx context.Context, cs kubernetes.Interface) error {
	for i := 1; i <= c.Nodes; i++ {
		name := NodeName(i)
		node := &v1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
				"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
				"topology.kubernetes.io/zone": fmt.Sprintf("zone-%c", 'a'+(i-1)%2),
			}},
			Spec: v1.NodeSpec{PodCIDR: PodCIDR(i).String(), PodCIDRs: []string{PodCIDR(i).String(), PodCIDR6(i).String()}},
		}
		created, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			created, err = cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		}
		if err != nil {
			return fmt.Errorf("creating Node %s: %w", name, err)
		}
		now := metav1.Now()
		created.Status.Addresses = []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: NodeAddr(i).String()},
			{Type: v1.NodeInternalIP, Address: NodeAddr6(i).String()},
			{Type: v1.NodeHostName, Address: name},
		}
		created.Status.Conditions = []v1.NodeCondition{{
			Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "LabNode",
			Message: "lab node namespace", LastHeartbeatTime: now, LastTransitionTime: now,
		}}
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("writing Node %s status: %w", name, err)
		}
	}
	return nil
}

// poll calls f every 200ms until it returns true, an error, or timeout; on
// timeout the error carries describe()'s report.
func poll(ctx context.Context, timeout time.Duration, f func() (bool, error), describe func() string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := f()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s: %s", timeout, describe())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
