package kubelet

import (
	"net/netip"
	"os"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// defaultPath is the container PATH when the kubelet has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// containerEnv is the process environment: PATH and HOSTNAME, the lab's
// POD_NAME, POD_NAMESPACE, POD_IP (the first pod IP, IPv4) and NODE_NAME,
// then the container's env entries with a plain value or a supported
// fieldRef (later entries win, so a container can override the lab's
// variables). podIPs and hostIPs are IPv4 first.
func containerEnv(pod *v1.Pod, c *v1.Container, podIPs []netip.Addr, hostIPs []string) []string {
	var ips []string
	for _, ip := range podIPs {
		ips = append(ips, ip.String())
	}
	podIP := ""
	if len(ips) > 0 {
		podIP = ips[0]
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	vars := map[string]string{}
	env := []string{}
	add := func(k, v string) {
		vars[k] = v
		env = append(env, k+"="+v)
	}
	add("PATH", path)
	add("HOSTNAME", pod.Name)
	add("POD_NAME", pod.Name)
	add("POD_NAMESPACE", pod.Namespace)
	add("POD_IP", podIP)
	add("NODE_NAME", pod.Spec.NodeName)
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			add(e.Name, expandVars(e.Value, vars))
			continue
		}
		if f := e.ValueFrom.FieldRef; f != nil {
			if v, ok := fieldRefValue(pod, f.FieldPath, ips, hostIPs); ok {
				add(e.Name, v)
			}
		}
		// Secrets, config maps and resource fields are not supported: the
		// lab's pods do not use them.
	}
	return env
}

// fieldRefValue resolves a fieldRef as the kubelet does: status.podIP is
// the first pod IP, status.podIPs all of them comma-separated (likewise for
// the host IPs).
func fieldRefValue(pod *v1.Pod, path string, podIPs, hostIPs []string) (string, bool) {
	first := func(s []string) string {
		if len(s) > 0 {
			return s[0]
		}
		return ""
	}
	switch path {
	case "metadata.name":
		return pod.Name, true
	case "metadata.namespace":
		return pod.Namespace, true
	case "metadata.uid":
		return string(pod.UID), true
	case "spec.nodeName":
		return pod.Spec.NodeName, true
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, true
	case "status.podIP":
		return first(podIPs), true
	case "status.podIPs":
		return strings.Join(podIPs, ","), true
	case "status.hostIP":
		return first(hostIPs), true
	case "status.hostIPs":
		return strings.Join(hostIPs, ","), true
	}
	return "", false
}

// containerArgv is the process command line: the container's command and
// args, or, for an image without a command (the lab's "labecho" image),
// the echo binary with the args ("serve" when there are none).
func containerArgv(c *v1.Container, echoBinary string, env []string) []string {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	var argv []string
	switch {
	case len(c.Command) > 0:
		argv = append(append(argv, c.Command...), c.Args...)
	case len(c.Args) > 0:
		argv = append([]string{echoBinary}, c.Args...)
	default:
		argv = []string{echoBinary, "serve"}
	}
	for i := range argv {
		argv[i] = expandVars(argv[i], vars)
	}
	return argv
}

// expandVars does Kubernetes' $(VAR) expansion: known variables are
// replaced, unknown references are left as written, $$ is a literal $.
func expandVars(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}
