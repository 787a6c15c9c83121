package kubelet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeTiming is a readiness probe's schedule with the API's defaults
// filled in (the API server defaults them too; this covers objects that
// did not go through it, such as fakes in tests).
type probeTiming struct {
	InitialDelay     time.Duration
	Period           time.Duration
	Timeout          time.Duration
	SuccessThreshold int
	FailureThreshold int
}

func timingOf(p *v1.Probe) probeTiming {
	t := probeTiming{
		InitialDelay:     time.Duration(p.InitialDelaySeconds) * time.Second,
		Period:           time.Duration(p.PeriodSeconds) * time.Second,
		Timeout:          time.Duration(p.TimeoutSeconds) * time.Second,
		SuccessThreshold: int(p.SuccessThreshold),
		FailureThreshold: int(p.FailureThreshold),
	}
	if t.InitialDelay < 0 {
		t.InitialDelay = 0
	}
	if t.Period <= 0 {
		t.Period = 10 * time.Second
	}
	if t.Timeout <= 0 {
		t.Timeout = time.Second
	}
	if t.SuccessThreshold <= 0 {
		t.SuccessThreshold = 1
	}
	if t.FailureThreshold <= 0 {
		t.FailureThreshold = 3
	}
	return t
}

// readiness is the probe result state machine, the kubelet's: a container
// starts not ready, becomes ready after SuccessThreshold consecutive
// successes and not ready after FailureThreshold consecutive failures;
// anything shorter keeps the previous result.
type readiness struct {
	timing probeTiming
	ready  bool
	// run counts consecutive results equal to last.
	last bool
	run  int
}

func newReadiness(t probeTiming) *readiness { return &readiness{timing: t} }

// observe records one probe result and returns the readiness.
func (r *readiness) observe(success bool) bool {
	if r.run == 0 || success != r.last {
		r.last, r.run = success, 0
	}
	r.run++
	switch {
	case success && r.run >= r.timing.SuccessThreshold:
		r.ready = true
	case !success && r.run >= r.timing.FailureThreshold:
		r.ready = false
	}
	return r.ready
}

// reset forgets everything, for a restarted container.
func (r *readiness) reset() { r.ready, r.run = false, 0 }

// prober runs one pod's probe. Network probes are made from the node
// namespace, as a real kubelet probes from the node; exec probes run inside
// the pod namespace.
type prober struct {
	ip        ipCmd
	nodeNetns string
	podNetns  string
	podIP     netip.Addr
	container *v1.Container
	env       []string
}

// run performs one probe; nil means success.
func (p *prober) run(ctx context.Context, probe *v1.Probe) error {
	switch {
	case probe.HTTPGet != nil:
		return p.httpGet(ctx, probe.HTTPGet)
	case probe.TCPSocket != nil:
		port, err := p.port(probe.TCPSocket.Port)
		if err != nil {
			return err
		}
		conn, err := p.dial(ctx, "tcp", p.hostPort(probe.TCPSocket.Host, port))
		if err != nil {
			return err
		}
		return conn.Close()
	case probe.Exec != nil:
		return p.exec(ctx, probe.Exec.Command)
	case probe.GRPC != nil:
		return errors.New("grpc probes are not supported by the lab kubelet")
	}
	return errors.New("probe has no handler")
}

func (p *prober) hostPort(host string, port int) string {
	if host == "" {
		host = p.podIP.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// port resolves a numeric or named container port.
func (p *prober) port(v intstr.IntOrString) (int, error) {
	if v.Type == intstr.Int {
		if v.IntVal <= 0 || v.IntVal > 65535 {
			return 0, fmt.Errorf("bad probe port %d", v.IntVal)
		}
		return int(v.IntVal), nil
	}
	if n, err := strconv.Atoi(v.StrVal); err == nil && n > 0 && n <= 65535 {
		return n, nil
	}
	for _, cp := range p.container.Ports {
		if cp.Name == v.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container has no port named %q", v.StrVal)
}

// dial connects from the node namespace.
func (p *prober) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNetns(p.nodeNetns, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

func (p *prober) httpGet(ctx context.Context, g *v1.HTTPGetAction) error {
	port, err := p.port(g.Port)
	if err != nil {
		return err
	}
	scheme := "http"
	if g.Scheme == v1.URISchemeHTTPS {
		scheme = "https"
	}
	path := g.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	url := scheme + "://" + p.hostPort(g.Host, port) + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "labkubelet-probe")
	for _, h := range g.HTTPHeaders {
		if strings.EqualFold(h.Name, "host") {
			req.Host = h.Value
		} else {
			req.Header.Add(h.Name, h.Value)
		}
	}
	client := &http.Client{
		Transport: &http.Transport{
			DialContext:       p.dial,
			DisableKeepAlives: true,
			// Like the kubelet: probes do not verify certificates.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		},
		// Like the kubelet, a redirect answer counts as success.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10*1024))
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP probe %s: status %d", url, resp.StatusCode)
	}
	return nil
}

// exec runs the command inside the pod namespace with the container's
// environment; exit status 0 is success.
func (p *prober) exec(ctx context.Context, command []string) error {
	if len(command) == 0 {
		return errors.New("exec probe has no command")
	}
	args := append([]string{"netns", "exec", p.podNetns}, command...)
	cmd := exec.CommandContext(ctx, p.ip.path, args...)
	cmd.Env = p.env
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("exec probe %q: %v: %s", command, err, strings.TrimSpace(string(out)))
	}
	return nil
}
