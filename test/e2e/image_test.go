//go:build e2e

package e2e

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

// The container image (hack/build-image.sh, `make image`) without a
// container runtime: its root filesystem is built from Debian packages, and
// the VM runs commands from it as a runtime would run the DaemonSet's
// containers: a fresh writable layer (overlay) over it, /proc, /sys and
// /dev, the pod's volumes bind-mounted, chroot. Each run is in a network
// namespace of its own, never in a lab node's: the nodes' proxies keep
// running undisturbed.

var (
	imageOnce sync.Once
	imageErr  error
)

// imageDir builds the image's root filesystem and archives once per run
// (debootstrap's output is cached, so a rebuild takes seconds) and returns
// _output/image.
func imageDir(t *testing.T) string {
	t.Helper()
	imageOnce.Do(func() {
		start := time.Now()
		cmd := exec.Command("bash", filepath.Join(lab.Repo, "hack", "build-image.sh"))
		cmd.Dir = lab.Repo
		cmd.Env = append(os.Environ(), "IMAGE_BUILDER=rootfs")
		out, err := cmd.CombinedOutput()
		if err != nil {
			imageErr = fmt.Errorf("hack/build-image.sh: %v\n%s", err, out)
			return
		}
		t.Logf("hack/build-image.sh (%.0fs):\n%s", time.Since(start).Seconds(), out)
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return filepath.Join(lab.Repo, "_output", "image")
}

// containerScript runs a command from a root filesystem as a container:
//
//	sh -ec SCRIPT sh ROOTFS WORKDIR [--bind|--ro-bind SRC DST]... [--env K=V]... -- COMMAND...
//
// It runs in a mount namespace of its own (unshare), so its mounts go away
// with it; the writable layer is WORKDIR.
const containerScript = `
rootfs=$1 work=$2
shift 2
r=$work/root
mkdir -p "$work/upper" "$work/work" "$r"
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/work" "$r"
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
envs=
while [ "$1" != -- ]; do
  case "$1" in
  --bind | --ro-bind)
    # The destination's symlinks resolve inside the root (/var/run -> /run).
    dst=$r$(chroot "$r" realpath -m "$3")
    if [ -d "$2" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")" && touch "$dst"; fi
    mount --bind "$2" "$dst"
    [ "$1" = --bind ] || mount -o remount,bind,ro "$dst"
    shift 3 ;;
  --env) envs="$envs $2"; shift 2 ;;
  *) echo "container: unknown option $1" >&2; exit 2 ;;
  esac
done
shift
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin $envs chroot "$r" "$@"
`

// imageWork is the VM directory (tmpfs) holding the containers' writable
// layers and the files given to them.
const imageWork = "/run/lab/e2e-image"

// containerArgv is the argv that runs command from the image's root
// filesystem with a fresh writable layer named name.
func containerArgv(rootfs, name string, opts []string, command ...string) []string {
	argv := []string{"unshare", "-m", "--propagation", "private", "sh", "-ec", containerScript, "sh", rootfs, imageWork + "/" + name}
	argv = append(argv, opts...)
	return append(append(argv, "--"), command...)
}

// freshNetns makes an empty network namespace in the VM, deleted when the
// test ends, and runs setup (a shell script) in it.
func freshNetns(t *testing.T, ns, setup string) {
	t.Helper()
	ctx := context.Background()
	script := fmt.Sprintf("ip netns del %[1]s 2>/dev/null || true\nip netns add %[1]s\nip -n %[1]s link set lo up\n", ns)
	if setup != "" {
		script += fmt.Sprintf("ip netns exec %s sh -ec %s\n", ns, shQuote(setup))
	}
	if out, err := lab.Output(ctx, "vm", "sh", "-ec", script); err != nil {
		t.Fatalf("step: network namespace %s: %v\n%s", ns, err, out)
	}
	t.Cleanup(func() {
		_, _ = lab.Output(context.Background(), "vm", "ip", "netns", "del", ns)
	})
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// vmWrite writes data to a file in the VM.
func vmWrite(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	_, err := lab.Agent().Output(context.Background(), agent.ExecRequest{
		Argv:  []string{"sh", "-ec", fmt.Sprintf("mkdir -p %s && cat > %s && chmod %o %s", filepath.Dir(path), path, mode, path)},
		Stdin: data,
	})
	if err != nil {
		t.Fatalf("step: writing %s in the VM: %v", path, err)
	}
}

// The image as built: a static binary, the iptables wrapper as the
// iptables alternative, nothing of the build host, and an OCI archive whose
// blobs match their digests, with one layer and the proxy as entrypoint.
func TestImageArchive(t *testing.T) {
	dir := imageDir(t)
	rootfs := filepath.Join(dir, "rootfs")

	bin := filepath.Join(rootfs, "usr", "local", "bin", "kube-ipvs-proxy")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("step: the image's binary: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("step: %s is dynamically linked", bin)
		}
	}
	f.Close()
	for _, cmd := range []string{"iptables", "iptables-restore", "iptables-save", "ip6tables", "ip6tables-restore", "ip6tables-save"} {
		target, err := os.Readlink(filepath.Join(rootfs, "etc", "alternatives", cmd))
		if err != nil || target != "/usr/sbin/iptables-wrapper" {
			t.Errorf("step: the image's %s alternative is %q (%v), want /usr/sbin/iptables-wrapper", cmd, target, err)
		}
	}
	for _, p := range []string{"etc/hostname", "etc/resolv.conf"} {
		if data, err := os.ReadFile(filepath.Join(rootfs, p)); err != nil || len(data) != 0 {
			t.Errorf("step: the image's /%s holds %q (%v), want it empty", p, data, err)
		}
	}

	// The OCI archive: index -> manifest -> config and layer.
	blobs := map[string][]byte{}
	af, err := os.Open(filepath.Join(dir, "kube-ipvs-proxy.oci.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	tr := tar.NewReader(af)
	var index []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("step: reading the OCI archive: %v", err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case name == "index.json":
			index = data
		case strings.HasPrefix(name, "blobs/sha256/") && h.Typeflag == tar.TypeReg:
			digest := "sha256:" + strings.TrimPrefix(name, "blobs/sha256/")
			sum := sha256.Sum256(data)
			if got := "sha256:" + hex.EncodeToString(sum[:]); got != digest {
				t.Fatalf("step: OCI blob %s has digest %s", digest, got)
			}
			blobs[digest] = data
		}
	}
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations"`
	}
	var idx struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(index, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("step: the OCI index (%v): %s", err, index)
	}
	if tag := idx.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; tag != "latest" {
		t.Errorf("step: the OCI index names the image %q, want latest", tag)
	}
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(blobs[idx.Manifests[0].Digest], &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("step: the OCI manifest (%v, want one layer): %s", err, blobs[idx.Manifests[0].Digest])
	}
	if l := manifest.Layers[0]; len(blobs[l.Digest]) != l.Size {
		t.Errorf("step: the layer %s: %d bytes in the archive, %d in the manifest", l.Digest, len(blobs[l.Digest]), l.Size)
	}
	var config struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			Entrypoint []string `json:"Entrypoint"`
			Env        []string `json:"Env"`
		} `json:"config"`
	}
	if err := json.Unmarshal(blobs[manifest.Config.Digest], &config); err != nil {
		t.Fatalf("step: the OCI config: %v", err)
	}
	if strings.Join(config.Config.Entrypoint, " ") != "/usr/local/bin/kube-ipvs-proxy" || config.OS != "linux" ||
		!strings.Contains(strings.Join(config.Config.Env, " "), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin") {
		t.Errorf("step: the OCI config: %s", blobs[manifest.Config.Digest])
	}
	t.Logf("OCI archive: manifest %s, layer %s (%d bytes), %s/%s", idx.Manifests[0].Digest, manifest.Layers[0].Digest,
		manifest.Layers[0].Size, config.OS, config.Architecture)
}

// The image's iptables picks the node's backend: the one kubelet's hint
// chain is in, the one with more rules, nf_tables on a node with none, or
// IPTABLES_MODE; every iptables command then runs that backend.
func TestImageIptablesBackend(t *testing.T) {
	reportOnFailure(t)
	rootfs := filepath.Join(imageDir(t), "rootfs")
	ctx := context.Background()

	// The binary runs from the image at all.
	help, err := lab.Output(ctx, "vm", containerArgv(rootfs, "help", nil, "kube-ipvs-proxy", "--help")...)
	if err != nil || !strings.Contains(help, "--hostname-override") {
		t.Fatalf("step: kube-ipvs-proxy --help from the image: %v\n%s", err, help)
	}
	t.Cleanup(func() { _, _ = lab.Output(context.Background(), "vm", "rm", "-rf", imageWork) })

	for i, c := range []struct {
		name, setup string
		env         []string
		want        string // nft or legacy
	}{
		{name: "kubelet's hint chain in nf_tables", setup: "iptables-nft -t mangle -N KUBE-IPTABLES-HINT", want: "nft"},
		{name: "kubelet's hint chain in legacy", setup: "iptables-legacy -t mangle -N KUBE-IPTABLES-HINT", want: "legacy"},
		{name: "more legacy rules than nf_tables ones", setup: "iptables-legacy -A INPUT -s 192.0.2.1 -j ACCEPT\nip6tables-legacy -A INPUT -s 2001:db8::1 -j ACCEPT\niptables-nft -A INPUT -s 192.0.2.1 -j ACCEPT", want: "legacy"},
		{name: "no rules at all", want: "nft"},
		{name: "IPTABLES_MODE=legacy over nf_tables' hint", setup: "iptables-nft -t mangle -N KUBE-IPTABLES-HINT", env: []string{"IPTABLES_MODE=legacy"}, want: "legacy"},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			ns := fmt.Sprintf("kipximg%d", i)
			freshNetns(t, ns, c.setup)
			var opts []string
			for _, e := range c.env {
				opts = append(opts, "--env", e)
			}
			argv := containerArgv(rootfs, ns, opts, "sh", "-ec",
				"iptables --version; ip6tables-restore --version; iptables-save --version; readlink /etc/alternatives/iptables /etc/alternatives/ip6tables")
			out, err := lab.Agent().Output(ctx, agent.ExecRequest{Netns: ns, Argv: argv})
			if err != nil {
				t.Fatalf("step: iptables from the image in %s: %v\n%s", ns, err, out)
			}
			backend := map[string]string{"nft": "(nf_tables)", "legacy": "(legacy)"}[c.want]
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 5 || !strings.HasSuffix(lines[0], backend) || !strings.HasSuffix(lines[1], backend) ||
				!strings.HasSuffix(lines[2], backend) || lines[3] != "/usr/sbin/iptables-"+c.want || lines[4] != "/usr/sbin/ip6tables-"+c.want {
				t.Fatalf("step: with %s, the image's iptables is not %s:\n%s", c.name, backend, out)
			}
			t.Logf("%s: %s", c.name, lines[0])
		})
	}
}

// The image runs as the DaemonSet runs it: the init container's command,
// then the proxy's, with the ConfigMap (placeholders filled in) where the
// DaemonSet mounts it and a token of the manifests' ServiceAccount where
// the kubelet mounts it, in a network namespace of its own on the node
// network. It reaches the API server with the ConfigMap's kubeconfig,
// programs the kubernetes Service through IPVS, the ipsets and the image's
// iptables (nf_tables, the backend kubelet's hint chain is in), answers
// /livez and /healthz, and is never refused by the API server.
func TestImageRunsLikeTheDaemonSet(t *testing.T) {
	reportOnFailure(t)
	ctx := context.Background()
	rootfs := filepath.Join(imageDir(t), "rootfs")
	k := kustomizeManifests(t)
	config, kubeconfig := k.configFor(t)
	proxy := k.proxyContainer(t)

	// The ServiceAccount and its RBAC, and a token as the kubelet would
	// mount it.
	rbac, err := os.ReadFile(filepath.Join(lab.Repo, "manifests", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	applyCreated(t, rbac)
	tok, err := cs.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "kube-ipvs-proxy", &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("step: a token of the ServiceAccount: %v", err)
	}
	ca, err := os.ReadFile(filepath.Join(lab.StateDir, "pki", "apiserver.crt"))
	if err != nil {
		t.Fatal(err)
	}
	const ns, daemon = "kipximg", "e2e-image-proxy"
	files := imageWork + "/" + ns + "-files"
	vmWrite(t, files+"/config/config.conf", []byte(config), 0o644)
	vmWrite(t, files+"/config/kubeconfig.conf", []byte(kubeconfig), 0o644)
	vmWrite(t, files+"/sa/token", []byte(tok.Status.Token), 0o600)
	vmWrite(t, files+"/sa/ca.crt", ca, 0o644)
	vmWrite(t, files+"/sa/namespace", []byte("kube-system"), 0o644)
	t.Cleanup(func() { _, _ = lab.Output(context.Background(), "vm", "rm", "-rf", imageWork) })

	// A namespace on the node network (an address no node has), with
	// kubelet's iptables hint chain in nf_tables, as on a real node.
	freshNetns(t, ns, "")
	const addr = "172.30.0.99"
	setup := fmt.Sprintf(`ip link del v%[1]s 2>/dev/null || true
ip link add v%[1]s type veth peer name eth0 netns %[1]s
ip link set v%[1]s master labbr0 up
ip -n %[1]s addr add %[2]s/24 dev eth0
ip -n %[1]s link set eth0 up
ip -n %[1]s route add default via %[3]s
ip netns exec %[1]s iptables-nft -t mangle -N KUBE-IPTABLES-HINT
touch /run/xtables.lock
`, ns, addr, labctl.BridgeAddr)
	if out, err := lab.Output(ctx, "vm", "sh", "-ec", setup); err != nil {
		t.Fatalf("step: the namespace's network: %v\n%s", err, out)
	}

	// The pod's volumes, as the DaemonSet mounts them.
	configMount := ""
	for _, m := range proxy.VolumeMounts {
		if m.Name == "config" {
			configMount = m.MountPath
		}
	}
	volumes := []string{
		"--ro-bind", files + "/config", configMount,
		"--ro-bind", files + "/sa", "/var/run/secrets/kubernetes.io/serviceaccount",
		"--ro-bind", "/lib/modules", "/lib/modules",
		"--bind", "/run/xtables.lock", "/run/xtables.lock",
	}

	// The init container.
	init := k.ds.Spec.Template.Spec.InitContainers[0]
	out, err := lab.Agent().Output(ctx, agent.ExecRequest{Netns: ns,
		Argv: containerArgv(rootfs, ns+"-init", []string{"--ro-bind", "/lib/modules", "/lib/modules"}, append(init.Command, init.Args...)...)})
	if err != nil {
		t.Fatalf("step: the init container's %q from the image: %v\n%s", init.Command, err, out)
	}
	t.Logf("init container: ok %s", out)

	// The proxy, with the DaemonSet's command line.
	var argv []string
	for _, a := range append(append([]string{}, proxy.Command...), proxy.Args...) {
		argv = append(argv, strings.ReplaceAll(a, "$(NODE_NAME)", "node1"))
	}
	if _, err := lab.Agent().StartDaemon(ctx, agent.DaemonSpec{Name: daemon, Netns: ns,
		Argv: containerArgv(rootfs, ns, append(volumes, "--env", "NODE_NAME=node1"), argv...)}); err != nil {
		t.Fatalf("step: starting %q from the image: %v", argv, err)
	}
	logPath := "/var/log/lab/" + daemon + ".log"
	t.Cleanup(func() {
		_, _ = lab.Agent().StopDaemon(context.Background(), agent.SignalRequest{Name: daemon})
		if t.Failed() {
			log, _ := lab.Output(context.Background(), "vm", "tail", "-n", "60", logPath)
			t.Logf("the image's proxy log:\n%s", log)
		}
	})
	t.Logf("started %q from the image in %s", argv, ns)

	// The kubernetes Service, programmed in the namespace's IPVS table.
	kube, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := kube.Spec.ClusterIP + ":443"
	rs := labctl.APIServerGuestAddr + ":" + strconv.Itoa(lab.APIPort)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out, err := lab.Agent().Output(ctx, agent.ExecRequest{Netns: ns, Argv: []string{"ipvsadm", "-Ln", "-t", vip}})
		if err == nil && strings.Contains(out, "-> "+rs) {
			t.Logf("%s: ipvsadm -Ln -t %s:\n%s", ns, vip, out)
			break
		}
		if st, derr := lab.Agent().Daemons(ctx); derr == nil {
			for _, d := range st {
				if d.Name == daemon && !d.Running {
					t.Fatalf("step: the image's proxy exited (%s)", d.Exit)
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("step: the image's proxy did not program %s -> %s: %v\n%s", vip, rs, err, out)
		}
		time.Sleep(2 * time.Second)
	}
	for _, path := range []string{"/livez", "/healthz"} {
		out, err := lab.Agent().Output(ctx, agent.ExecRequest{Netns: ns, TimeoutSeconds: 10,
			Argv: []string{"curl", "-sf", "-m", "5", "http://127.0.0.1:10256" + path}})
		if err != nil {
			t.Errorf("step: GET %s of the image's proxy: %v\n%s", path, err, out)
		}
	}
	sets, err := lab.Agent().Output(ctx, agent.ExecRequest{Netns: ns, Argv: []string{"ipset", "list", "KUBE-CLUSTER-IP"}})
	if err != nil || !strings.Contains(sets, kube.Spec.ClusterIP+",tcp:443") {
		t.Errorf("step: KUBE-CLUSTER-IP in %s lacks %s,tcp:443 (%v):\n%s", ns, kube.Spec.ClusterIP, err, sets)
	}
	// The chains, through the image's own iptables, in nf_tables.
	out, err = lab.Agent().Output(ctx, agent.ExecRequest{Netns: ns,
		Argv: containerArgv(rootfs, ns+"-save", nil, "sh", "-ec", "iptables --version; iptables-save -t nat")})
	if err != nil || !strings.Contains(out, "(nf_tables)") || !strings.Contains(out, ":KUBE-SERVICES ") ||
		!strings.Contains(out, "-A PREROUTING") || !strings.Contains(out, "-j KUBE-SERVICES") {
		t.Errorf("step: iptables-save -t nat from the image in %s (%v) lacks the proxy's chains in nf_tables:\n%s", ns, err, out)
	}
	log, err := lab.Output(ctx, "vm", "cat", logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "forbidden") || strings.Contains(l, "Forbidden") {
			t.Errorf("step: the image's proxy was refused by the API server: %s", l)
		}
	}
}
