//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authzv1 "k8s.io/api/authorization/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// The split manifests that kustomization.yaml lists and kube-ipvs-proxy.yaml
// concatenates, in this order.
var manifestParts = []string{"rbac.yaml", "configmap.yaml", "daemonset.yaml"}

// The placeholders of the ConfigMap that the operator edits.
const (
	placeholderClusterCIDR = "clusterCIDR: EDIT-ME"
	placeholderServer      = "server: https://EDIT-ME:6443"
)

// kubectl runs the lab's kubectl with the admin kubeconfig (stdin may be
// nil) and fails the test on error.
func kubectl(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, err := kubectlErr(stdin, args...)
	if err != nil {
		t.Fatalf("step: kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func kubectlErr(stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(context.Background(), lab.KubectlPath(), append([]string{"--kubeconfig=" + lab.Kubeconfig()}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// applyCreated applies manifests and deletes, when the test ends, the
// objects that this apply created (not those that were there before).
func applyCreated(t *testing.T, manifests []byte) {
	t.Helper()
	out := kubectl(t, manifests, "apply", "-f", "-")
	t.Logf("kubectl apply:\n%s", out)
	var created []string
	for _, l := range strings.Split(out, "\n") {
		if name, ok := strings.CutSuffix(strings.TrimSpace(l), " created"); ok {
			created = append(created, name)
		}
	}
	t.Cleanup(func() {
		if len(created) == 0 {
			return
		}
		args := append([]string{"delete", "--ignore-not-found", "--wait=false", "-n", "kube-system"}, created...)
		if out, err := kubectlErr(nil, args...); err != nil {
			t.Errorf("cleanup: kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	})
}

// kustomized is `kubectl kustomize manifests/` with its ConfigMap and
// DaemonSet decoded.
type kustomized struct {
	yaml []byte
	cm   *v1.ConfigMap
	ds   *appsv1.DaemonSet
}

func kustomizeManifests(t *testing.T) kustomized {
	t.Helper()
	k := kustomized{yaml: []byte(kubectl(t, nil, "kustomize", filepath.Join(lab.Repo, "manifests")))}
	for _, doc := range strings.Split(string(k.yaml), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("kubectl kustomize output: %v", err)
		}
		switch meta.Kind {
		case "ConfigMap":
			k.cm = &v1.ConfigMap{}
			if err := yaml.UnmarshalStrict([]byte(doc), k.cm); err != nil {
				t.Fatalf("the ConfigMap: %v", err)
			}
		case "DaemonSet":
			k.ds = &appsv1.DaemonSet{}
			if err := yaml.UnmarshalStrict([]byte(doc), k.ds); err != nil {
				t.Fatalf("the DaemonSet: %v", err)
			}
		}
	}
	if k.cm == nil || k.ds == nil {
		t.Fatalf("kubectl kustomize manifests/ has no ConfigMap or no DaemonSet:\n%s", k.yaml)
	}
	return k
}

// configFor returns the ConfigMap's config.conf and kubeconfig.conf with
// the placeholders replaced by the lab's pod CIDRs and API server address
// (as the VM reaches it), failing if a placeholder is missing.
func (k kustomized) configFor(t *testing.T) (config, kubeconfig string) {
	t.Helper()
	config, kubeconfig = k.cm.Data["config.conf"], k.cm.Data["kubeconfig.conf"]
	if strings.Count(config, placeholderClusterCIDR) != 1 || strings.Count(kubeconfig, placeholderServer) != 1 {
		t.Fatalf("the ConfigMap lacks its placeholders %q (config.conf) and %q (kubeconfig.conf):\n%s\n%s",
			placeholderClusterCIDR, placeholderServer, config, kubeconfig)
	}
	config = strings.Replace(config, placeholderClusterCIDR, "clusterCIDR: "+labctl.ClusterCIDRs, 1)
	kubeconfig = strings.Replace(kubeconfig, placeholderServer,
		"server: https://"+labctl.APIServerGuestAddr+":"+strconv.Itoa(lab.APIPort), 1)
	return config, kubeconfig
}

// proxyContainer is the DaemonSet's proxy container.
func (k kustomized) proxyContainer(t *testing.T) v1.Container {
	t.Helper()
	for _, c := range k.ds.Spec.Template.Spec.Containers {
		if c.Name == "kube-ipvs-proxy" {
			return c
		}
	}
	t.Fatalf("the DaemonSet has no container kube-ipvs-proxy")
	return v1.Container{}
}

// The manifests in the repository are valid for the API server
// (server-side dry run: schema, defaulting and admission, nothing created).
func TestManifestsAreValid(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(lab.Repo, "manifests", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests found (err %v)", err)
	}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		out := kubectl(t, nil, "apply", "--dry-run=server", "-f", f)
		t.Logf("%s:\n%s", filepath.Base(f), out)
	}
}

// kube-ipvs-proxy.yaml, the single-file form, is the split manifests
// concatenated, so that both install the same thing.
func TestManifestsSingleFileMatchesParts(t *testing.T) {
	dir := filepath.Join(lab.Repo, "manifests")
	single, err := os.ReadFile(filepath.Join(dir, "kube-ipvs-proxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The single file's header comment ends at its first blank line.
	_, body, ok := strings.Cut(string(single), "\n\n")
	if !ok {
		t.Fatal("kube-ipvs-proxy.yaml has no header comment ending in a blank line")
	}
	var parts []string
	for _, p := range manifestParts {
		data, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, string(data))
	}
	if want := strings.Join(parts, "---\n"); body != want {
		t.Fatalf("manifests/kube-ipvs-proxy.yaml differs from %s concatenated; regenerate it with\n"+
			"  cd manifests && { sed '/^$/q' kube-ipvs-proxy.yaml; awk 'FNR==1 && NR>1 {print \"---\"} 1' %s; } > x && mv x kube-ipvs-proxy.yaml",
			strings.Join(manifestParts, ", "), strings.Join(manifestParts, " "))
	}
}

// `kubectl apply -k manifests/` creates the ServiceAccount, RBAC, ConfigMap
// and DaemonSet (the lab runs no DaemonSet controller: no pod starts); the
// ServiceAccount may do what the proxy needs and nothing else; the
// ConfigMap's configuration, its placeholders filled in, is accepted by the
// proxy, and refused as shipped.
func TestManifestsApply(t *testing.T) {
	ctx := context.Background()
	k := kustomizeManifests(t)
	applyCreated(t, k.yaml)

	const ns, name = "kube-system", "kube-ipvs-proxy"
	if _, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
		t.Errorf("step: the ServiceAccount: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); err != nil {
		t.Errorf("step: the ClusterRole: %v", err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Get(ctx, name, metav1.GetOptions{}); err != nil {
		t.Errorf("step: the ClusterRoleBinding: %v", err)
	}
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("step: the ConfigMap: %v", err)
	}
	ds, err := cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("step: the DaemonSet: %v", err)
	}
	checkDaemonSet(t, ds, cm)

	t.Run("RBAC", func(t *testing.T) {
		sa := "system:serviceaccount:" + ns + ":" + name
		for _, c := range []struct {
			group, resource, verb string
			allowed               bool
		}{
			{"", "services", "list", true},
			{"", "services", "watch", true},
			{"discovery.k8s.io", "endpointslices", "list", true},
			{"discovery.k8s.io", "endpointslices", "watch", true},
			{"", "nodes", "get", true},
			{"", "nodes", "list", true},
			{"", "nodes", "watch", true},
			{"events.k8s.io", "events", "create", true},
			{"events.k8s.io", "events", "patch", true},
			{"", "events", "create", true},
			{"", "events", "update", true},
			{"", "services", "update", false},
			{"", "services", "delete", false},
			{"", "nodes", "patch", false},
			{"", "secrets", "get", false},
			{"", "secrets", "list", false},
			{"", "configmaps", "list", false},
			{"", "pods", "create", false},
			{"", "endpoints", "list", false},
			{"discovery.k8s.io", "endpointslices", "create", false},
			{"events.k8s.io", "events", "delete", false},
		} {
			r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User:               sa,
				Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
				ResourceAttributes: &authzv1.ResourceAttributes{Group: c.group, Resource: c.resource, Verb: c.verb},
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("SubjectAccessReview: %v", err)
			}
			if r.Status.Allowed != c.allowed {
				t.Errorf("the ServiceAccount may %s %s.%s: %v, want %v", c.verb, c.resource, c.group, r.Status.Allowed, c.allowed)
			}
		}
	})

	t.Run("Config", func(t *testing.T) {
		bin := filepath.Join(lab.Repo, "_output", "bin", "kube-ipvs-proxy")
		dir := t.TempDir()
		write := func(name, data string) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
			return p
		}
		run := func(config string) (string, error) {
			cmd := exec.Command(bin, "--config", config, "--write-config-to", "/dev/stdout")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if err != nil {
				return stdout.String() + stderr.String(), err
			}
			return stdout.String(), nil
		}

		// As shipped: refused, naming the field to edit.
		out, err := run(write("shipped.conf", cm.Data["config.conf"]))
		if err == nil || !strings.Contains(out, "clusterCIDR") || !strings.Contains(out, "EDIT-ME") {
			t.Errorf("step: the shipped config.conf (placeholder clusterCIDR) was not refused with a message naming clusterCIDR (err %v):\n%s", err, out)
		}

		// Filled in: accepted, and the effective configuration is the file's.
		config, kubeconfig := k.configFor(t)
		out, err = run(write("config.conf", config))
		if err != nil {
			t.Fatalf("step: %s --config (the ConfigMap's, clusterCIDR %s) --write-config-to /dev/stdout: %v\n%s", bin, labctl.ClusterCIDRs, err, out)
		}
		var eff struct {
			Mode             string `json:"mode"`
			ClusterCIDR      string `json:"clusterCIDR"`
			ClientConnection struct {
				Kubeconfig string `json:"kubeconfig"`
			} `json:"clientConnection"`
			IPVS struct {
				Scheduler string `json:"scheduler"`
			} `json:"ipvs"`
		}
		if err := yaml.Unmarshal([]byte(out), &eff); err != nil {
			t.Fatalf("the effective configuration: %v\n%s", err, out)
		}
		mount := ""
		for _, m := range k.proxyContainer(t).VolumeMounts {
			if m.Name == "config" {
				mount = m.MountPath
			}
		}
		if eff.Mode != "ipvs" || eff.ClusterCIDR != labctl.ClusterCIDRs || eff.IPVS.Scheduler != "rr" ||
			eff.ClientConnection.Kubeconfig != filepath.Join(mount, "kubeconfig.conf") {
			t.Errorf("step: the effective configuration is not the ConfigMap's (kubeconfig in the config volume at %q):\n%s", mount, out)
		}
		t.Logf("effective configuration:\n%s", out)

		// The kubeconfig: the API server's address, the ServiceAccount's
		// token and CA as the kubelet mounts them.
		kc, err := clientcmd.Load([]byte(kubeconfig))
		if err != nil {
			t.Fatalf("step: kubeconfig.conf: %v", err)
		}
		kctx := kc.Contexts[kc.CurrentContext]
		if kctx == nil || kc.Clusters[kctx.Cluster] == nil || kc.AuthInfos[kctx.AuthInfo] == nil {
			t.Fatalf("step: kubeconfig.conf has no current context with a cluster and a user:\n%s", kubeconfig)
		}
		cluster, user := kc.Clusters[kctx.Cluster], kc.AuthInfos[kctx.AuthInfo]
		const saDir = "/var/run/secrets/kubernetes.io/serviceaccount/"
		if user.TokenFile != saDir+"token" || cluster.CertificateAuthority != saDir+"ca.crt" ||
			cluster.Server != "https://"+labctl.APIServerGuestAddr+":"+strconv.Itoa(lab.APIPort) {
			t.Errorf("step: kubeconfig.conf: server %q, token file %q, CA %q; want the API server and the ServiceAccount's mounted token and CA",
				cluster.Server, user.TokenFile, cluster.CertificateAuthority)
		}
	})
}

// checkDaemonSet checks what the DaemonSet must do, as the API server
// stored it.
func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet, cm *v1.ConfigMap) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != "kube-ipvs-proxy" {
		t.Errorf("DaemonSet: hostNetwork %v, priorityClassName %q, serviceAccountName %q", spec.HostNetwork, spec.PriorityClassName, spec.ServiceAccountName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != v1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("DaemonSet: tolerations %+v, want one that tolerates everything", spec.Tolerations)
	}
	if u := ds.Spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("DaemonSet: updateStrategy %+v, want RollingUpdate with maxUnavailable 1", u)
	}
	if len(spec.InitContainers) != 1 || !strings.Contains(strings.Join(spec.InitContainers[0].Command, " "), "modprobe") {
		t.Errorf("DaemonSet: init containers %+v, want one that loads the modules", spec.InitContainers)
	}
	var c *v1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == "kube-ipvs-proxy" {
			c = &spec.Containers[i]
		}
	}
	if c == nil {
		t.Fatalf("DaemonSet: no container kube-ipvs-proxy")
	}
	argv := strings.Join(append(append([]string{}, c.Command...), c.Args...), " ")
	for _, want := range []string{"--config=/var/lib/kube-ipvs-proxy/config.conf", "--hostname-override=$(NODE_NAME)"} {
		if !strings.Contains(argv, want) {
			t.Errorf("DaemonSet: the proxy's command line %q lacks %s", argv, want)
		}
	}
	nodeName := false
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeName = true
		}
	}
	if !nodeName {
		t.Errorf("DaemonSet: no NODE_NAME from spec.nodeName in %+v", c.Env)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/livez" || p.HTTPGet.Port.IntValue() != 10256 {
		t.Errorf("DaemonSet: liveness probe %+v, want GET /livez on 10256", p)
	}
	if c.ReadinessProbe != nil {
		t.Errorf("DaemonSet: a readiness probe %+v (/healthz fails on a node being deleted)", c.ReadinessProbe)
	}
	mounts := map[string]v1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for _, p := range []string{"/var/lib/kube-ipvs-proxy", "/run/xtables.lock", "/lib/modules"} {
		if _, ok := mounts[p]; !ok {
			t.Errorf("DaemonSet: nothing mounted at %s (mounts %+v)", p, c.VolumeMounts)
		}
	}
	if !mounts["/lib/modules"].ReadOnly {
		t.Errorf("DaemonSet: /lib/modules is mounted read-write")
	}
	for _, v := range spec.Volumes {
		if v.Name == "xtables-lock" && (v.HostPath == nil || v.HostPath.Path != "/run/xtables.lock" ||
			v.HostPath.Type == nil || *v.HostPath.Type != v1.HostPathFileOrCreate) {
			t.Errorf("DaemonSet: volume xtables-lock %+v, want hostPath /run/xtables.lock FileOrCreate", v)
		}
		if v.Name == "config" && (v.ConfigMap == nil || v.ConfigMap.Name != cm.Name) {
			t.Errorf("DaemonSet: volume config %+v, want the ConfigMap %s", v, cm.Name)
		}
	}
	for _, key := range []string{"config.conf", "kubeconfig.conf"} {
		if cm.Data[key] == "" {
			t.Errorf("ConfigMap: no %s", key)
		}
	}
}
