//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ---------------------------------------------------------------------------
// 3. UDP conntrack cleanup

// A UDP client with a fixed source port talks to a single-pod Service; the
// pod is deleted and replaced. Within 2 s after the old backend leaves the
// IPVS table, the same client (same source port, so the same conntrack
// entry if nobody deleted it) reaches the new backend, and the conntrack
// table of the node points at the new backend only.
func TestUDPConntrackCleanup(t *testing.T) {
	const (
		node       = "node1"
		sourcePort = "40000"
	)
	// A grace period long enough for the replacement to be ready before
	// the old pod stops: the old backend then leaves IPVS because the new
	// one is ready, not because it stopped answering.
	app := lcNewApp(t, "e2e-udpct", 1, 30, nil)
	vip := app.clusterIP() + ":80"
	oldIP, oldPod := app.podIPs()[0], app.podNames()[0]
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	// About a minute of requests, one every 100 ms, from the same port.
	var lines lcLines
	clientDone := make(chan error, 1)
	go func() {
		code, err := lab.Exec(ctx, node, []string{echoBin, "client", "--proto", "udp", "--addr", vip,
			"--source-port", sourcePort, "--count", "600", "--interval", "100ms", "--timeout", "500ms"}, &lines, io.Discard)
		if err == nil && code != 0 {
			err = fmt.Errorf("exit %d", code) // some requests failed: expected around the switch
		}
		clientDone <- err
	}()
	lcEventually(t, "the UDP client reaches the old pod", 30*time.Second, func() (bool, string) {
		for _, l := range lines.snapshot() {
			if lcPodOf(l.text) == oldPod {
				return true, ""
			}
		}
		return false, fmt.Sprintf("client output %v", lines.snapshot())
	})

	if err := cs.CoreV1().Pods(app.ns).Delete(ctx, oldPod, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("step: deleting pod %s: %v", oldPod, err)
	}
	var gone time.Time
	var newIP string
	lcEventually(t, node+": the old backend leaves the UDP virtual server", podsReadyTimeout, func() (bool, string) {
		rs, _, err := lab.IPVSVirtualServer(ctx, node, "UDP", vip)
		if err != nil {
			return false, err.Error()
		}
		var ips []string
		for _, r := range rs {
			ips = append(ips, r.Addr.Addr().String())
		}
		if slices.Contains(ips, oldIP) || len(ips) != 1 {
			return false, fmt.Sprintf("real servers %v", ips)
		}
		gone, newIP = time.Now(), ips[0]
		return true, ""
	})
	newPod := ""
	for _, p := range lcAppPods(t, app) {
		if p.Status.PodIP == newIP {
			newPod = p.Name
		}
	}
	if newPod == "" {
		t.Fatalf("step: no pod has the new backend's address %s:\n%s", newIP, lab.PodReport(ctx, app.ns))
	}
	t.Logf("%s: %s (%s) replaced %s (%s) in IPVS", node, newPod, newIP, oldPod, oldIP)

	// The same client reaches the new backend within 2 s.
	var reached time.Time
	lcEventually(t, "the same client reaches the new backend", 2*time.Second+500*time.Millisecond, func() (bool, string) {
		for _, l := range lines.snapshot() {
			if lcPodOf(l.text) == newPod {
				reached = l.at
				return true, ""
			}
		}
		select {
		case err := <-clientDone:
			t.Fatalf("step: the UDP client ended early (%v): %v", err, lines.snapshot())
		default:
		}
		return false, "no answer from " + newPod
	})
	if d := reached.Sub(gone); d > 2*time.Second {
		t.Fatalf("step: the client reached the new backend %.2fs after the old one left IPVS, want at most 2s", d.Seconds())
	} else {
		t.Logf("the client (source port %s) reached %s %.2fs after %s left IPVS", sourcePort, newPod, d.Seconds(), oldIP)
	}

	// The conntrack entry of the client's flow points at the new backend,
	// and none at the old one.
	lcEventually(t, node+": the conntrack entry of the client's flow points at the new backend", 10*time.Second, func() (bool, string) {
		out := nodeOutput(t, node, "conntrack", "-L", "-p", "udp", "--orig-port-src", sourcePort)
		if strings.Contains(out, "src="+oldIP+" ") {
			return false, "an entry still points at the old backend:\n" + out
		}
		return strings.Contains(out, "src="+newIP+" "), "conntrack -L:\n" + out
	})
	// And it stays there: a few seconds later the client still reaches the
	// new backend only.
	lcEventually(t, "the client keeps reaching the new backend", 10*time.Second, func() (bool, string) {
		n := 0
		for _, l := range lines.snapshot() {
			if l.at.After(gone.Add(3*time.Second)) && lcPodOf(l.text) == newPod {
				n++
			}
		}
		return n >= 10, fmt.Sprintf("%d answers from %s", n, newPod)
	})
	cancel()
	var late []string
	for _, l := range lines.snapshot() {
		if l.at.After(gone.Add(2*time.Second)) && lcPodOf(l.text) == oldPod {
			late = append(late, l.text)
		}
	}
	if len(late) > 0 {
		t.Fatalf("step: the old backend still answered the client more than 2 s after it left IPVS: %q", late)
	}
}
