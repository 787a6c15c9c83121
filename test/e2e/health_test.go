//go:build e2e

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The proxy serves /healthz and /livez on :10256 with upstream's JSON
// body, and /metrics on 127.0.0.1:10249 with upstream's metric names.
func TestHealthAndMetrics(t *testing.T) {
	reportOnFailure(t)
	for _, n := range lab.NodeNames() {
		for _, path := range []string{"/healthz", "/livez"} {
			body := nodeOutput(t, n, "curl", "-sf", "-m", "5", "http://127.0.0.1:10256"+path)
			var h struct {
				Healthy     bool   `json:"healthy"`
				LastUpdated string `json:"lastUpdated"`
				CurrentTime string `json:"currentTime"`
			}
			if err := json.Unmarshal([]byte(body), &h); err != nil || !h.Healthy || h.LastUpdated == "" || h.CurrentTime == "" {
				t.Fatalf("%s %s: %q (err %v), want upstream's JSON with healthy=true", n, path, body, err)
			}
		}
		// The sync metrics appear with the first sync, which may still be
		// running right after the lab came up.
		deadline := time.Now().Add(propagateTimeout)
		for {
			metrics := nodeOutput(t, n, "curl", "-sf", "-m", "5", "http://127.0.0.1:10249/metrics")
			var missing []string
			for _, name := range []string{
				"kubeproxy_sync_proxy_rules_duration_seconds_bucket",
				"kubeproxy_sync_proxy_rules_last_timestamp_seconds",
				"kubeproxy_proxy_healthz_total",
			} {
				if !strings.Contains(metrics, name) {
					missing = append(missing, name)
				}
			}
			if len(missing) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: /metrics has no %v after %s", n, missing, propagateTimeout)
			}
			time.Sleep(time.Second)
		}
		if mode := nodeOutput(t, n, "curl", "-sf", "-m", "5", "http://127.0.0.1:10249/proxyMode"); strings.TrimSpace(mode) != "ipvs" {
			t.Fatalf("%s: /proxyMode says %q, want ipvs", n, mode)
		}
	}
}

// The echo server answers over SCTP too (the pod program of the lab), from
// a node to a pod directly.
func TestEchoServerSpeaksSCTP(t *testing.T) {
	app := newEchoApp(t, "e2e-sctp", 1)
	ip, pod := app.podIPs()[0], app.podNames()[0]
	for _, n := range lab.NodeNames() {
		answers := request(t, n, "sctp", ip+":8080", 2)
		requireAnsweredBy(t, n+" sctp -> pod", answers, []string{pod})
	}
}
