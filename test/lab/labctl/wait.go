package labctl

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReadyEndpoints returns the addresses of a Service's ready endpoints.
func (c Config) ReadyEndpoints(ctx context.Context, ns, svc string) ([]string, error) {
	cs, err := c.Client()
	if err != nil {
		return nil, err
	}
	slices, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				seen[a] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for a := range seen {
		out = append(out, a)
	}
	sort.Strings(out)
	return out, nil
}

// WaitReadyEndpoints waits until a Service has exactly n ready endpoints and
// returns their addresses.
func (c Config) WaitReadyEndpoints(ctx context.Context, ns, svc string, n int, timeout time.Duration) ([]string, error) {
	var last []string
	err := poll(ctx, timeout, func() (bool, error) {
		eps, err := c.ReadyEndpoints(ctx, ns, svc)
		if err != nil {
			return false, nil
		}
		last = eps
		return len(eps) == n, nil
	}, func() string {
		return fmt.Sprintf("Service %s/%s has ready endpoints %v, want %d\n%s", ns, svc, last, n, c.PodReport(ctx, ns))
	})
	return last, err
}

// PodReport describes the pods of a namespace, for failure messages.
func (c Config) PodReport(ctx context.Context, ns string) string {
	cs, err := c.Client()
	if err != nil {
		return err.Error()
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pods in %s:\n", ns)
	for _, p := range pods.Items {
		ready := "not-ready"
		for _, cond := range p.Status.Conditions {
			if cond.Type == v1.PodReady && cond.Status == v1.ConditionTrue {
				ready = "ready"
			}
		}
		fmt.Fprintf(&b, "  %s node=%s ip=%s phase=%s %s deleting=%v\n", p.Name, p.Spec.NodeName, p.Status.PodIP, p.Status.Phase, ready, p.DeletionTimestamp != nil)
	}
	return b.String()
}

// PodIPNames maps pod IPs to pod names for a label selector.
func (c Config) PodIPNames(ctx context.Context, ns, selector string) (map[string]string, error) {
	cs, err := c.Client()
	if err != nil {
		return nil, err
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, p := range pods.Items {
		if p.Status.PodIP != "" {
			m[p.Status.PodIP] = p.Name
		}
	}
	return m, nil
}

// RealServer is one destination of a virtual server in a node's IPVS table.
type RealServer struct {
	Addr   netip.AddrPort
	Weight int
}

// IPVSVirtualServer reads one virtual server (proto TCP, UDP or SCTP; vip
// "ADDR:PORT") from a node's `ipvsadm -Sn`. found is false when it is absent.
func (c Config) IPVSVirtualServer(ctx context.Context, node, proto, vip string) (rs []RealServer, found bool, err error) {
	out, err := c.Output(ctx, node, "ipvsadm", "-Sn")
	if err != nil {
		return nil, false, err
	}
	flag := map[string]string{"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}[proto]
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "-A" && f[1] == flag && f[2] == vip {
			found = true
		}
		if len(f) >= 5 && f[0] == "-a" && f[1] == flag && f[2] == vip && f[3] == "-r" {
			ap, err := netip.ParseAddrPort(f[4])
			if err != nil {
				continue
			}
			r := RealServer{Addr: ap}
			for i := 5; i+1 < len(f); i++ {
				if f[i] == "-w" {
					r.Weight, _ = strconv.Atoi(f[i+1])
				}
			}
			rs = append(rs, r)
		}
	}
	return rs, found, nil
}

// IPVSRealServers returns the IPs of the real servers that take new
// connections (weight > 0) of a node's virtual server; weight-0 ones are
// draining after a removal.
func (c Config) IPVSRealServers(ctx context.Context, node, proto, vip string) ([]string, bool, error) {
	all, found, err := c.IPVSVirtualServer(ctx, node, proto, vip)
	var ips []string
	for _, r := range all {
		if r.Weight > 0 {
			ips = append(ips, r.Addr.Addr().String())
		}
	}
	sort.Strings(ips)
	return ips, found, err
}

// WaitIPVSRealServers waits until a node's virtual server has exactly the
// given real servers (IPs) taking new connections; want nil means the
// virtual server must be gone.
func (c Config) WaitIPVSRealServers(ctx context.Context, node, proto, vip string, want []string, timeout time.Duration) error {
	gone := want == nil
	want = append([]string{}, want...)
	sort.Strings(want)
	var got []string
	var found bool
	err := poll(ctx, timeout, func() (bool, error) {
		var err error
		got, found, err = c.IPVSRealServers(ctx, node, proto, vip)
		if err != nil {
			return false, err
		}
		if gone {
			return !found, nil
		}
		return found && strings.Join(got, ",") == strings.Join(want, ","), nil
	}, func() string {
		table, _ := c.Output(ctx, node, "ipvsadm", "-Ln")
		return fmt.Sprintf("%s: virtual server %s %s has real servers %v (present=%v), want %v\nipvsadm -Ln:\n%s\nproxy log:\n%s",
			node, proto, vip, got, found, want, table, c.guestTail(ctx, ProxyLogPath(node), 30))
	})
	return err
}
