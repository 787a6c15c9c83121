package labctl

import (
	"context"
	"fmt"
	"io"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
)

// Target names where a command runs: "vm" (the VM's root namespace), a node
// ("node1"), a pod ("pod/NAMESPACE/NAME", its network namespace, looked up
// through the API server) or a network namespace by name ("netns/NAME",
// which needs no API server: see PodTarget).
func (c Config) targetNetns(ctx context.Context, target string) (string, error) {
	switch {
	case target == "vm":
		return "", nil
	case strings.HasPrefix(target, "netns/"):
		return strings.TrimPrefix(target, "netns/"), nil
	case strings.HasPrefix(target, "pod/"):
		parts := strings.Split(target, "/")
		if len(parts) != 3 {
			return "", fmt.Errorf("pod target %q: want pod/NAMESPACE/NAME", target)
		}
		cs, err := c.Client()
		if err != nil {
			return "", err
		}
		pod, err := cs.CoreV1().Pods(parts[1]).Get(ctx, parts[2], metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return PodNetns(string(pod.UID)), nil
	default:
		if _, err := c.nodeIndex(target); err != nil {
			return "", err
		}
		return target, nil
	}
}

// PodTarget resolves a "pod/NAMESPACE/NAME" target to its "netns/NAME"
// form, which keeps working while the API server is away.
func (c Config) PodTarget(ctx context.Context, target string) (string, error) {
	ns, err := c.targetNetns(ctx, target)
	if err != nil {
		return "", err
	}
	return "netns/" + ns, nil
}

// PodNetns is the network namespace the lab kubelet makes for a pod.
func PodNetns(uid string) string {
	return "p" + strings.ReplaceAll(uid, "-", "")[:8]
}

// Exec runs argv at target, streaming its output; it returns the exit code.
func (c Config) Exec(ctx context.Context, target string, argv []string, stdout, stderr io.Writer) (int, error) {
	ns, err := c.targetNetns(ctx, target)
	if err != nil {
		return -1, err
	}
	return c.Agent().Exec(ctx, agent.ExecRequest{Netns: ns, Argv: argv}, stdout, stderr)
}

// Output runs argv at target and returns its stdout; a non-zero exit is an
// error carrying stderr.
func (c Config) Output(ctx context.Context, target string, argv ...string) (string, error) {
	ns, err := c.targetNetns(ctx, target)
	if err != nil {
		return "", err
	}
	return c.Agent().Output(ctx, agent.ExecRequest{Netns: ns, Argv: argv})
}

// ProxyCommand handles `lab proxy NODE restart|stop|start|logs|kill`.
func (c Config) ProxyCommand(ctx context.Context, node, action string, w io.Writer) error {
	if _, err := c.nodeIndex(node); err != nil {
		return err
	}
	switch action {
	case "stop":
		return c.StopProxy(ctx, node)
	case "start":
		return c.StartProxy(ctx, node)
	case "restart":
		if err := c.StopProxy(ctx, node); err != nil {
			return err
		}
		return c.StartProxy(ctx, node)
	case "kill":
		_, err := c.Agent().SignalDaemon(ctx, agent.SignalRequest{Name: proxyDaemon(node), Signal: 9})
		return err
	case "logs":
		_, err := c.Agent().Exec(ctx, agent.ExecRequest{Argv: []string{"cat", ProxyLogPath(node)}}, w, w)
		return err
	}
	return fmt.Errorf("unknown proxy action %q: want restart, stop, start, kill or logs", action)
}
