package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// touch gives every vector metric a child so it shows up in /metrics;
// vectors without children are not exported.
func touch() {
	SyncProxyRulesLatency.WithLabelValues("IPv4").Observe(0.01)
	SyncFullProxyRulesLatency.WithLabelValues("IPv4").Observe(0.01)
	SyncPartialProxyRulesLatency.WithLabelValues("IPv4").Observe(0.01)
	SyncProxyRulesLastTimestamp.WithLabelValues("IPv4").SetToCurrentTime()
	NetworkProgrammingLatency.WithLabelValues("IPv4").Observe(1)
	EndpointChangesPending.Set(0)
	EndpointChangesTotal.Inc()
	ServiceChangesPending.Set(0)
	ServiceChangesTotal.Inc()
	SyncProxyRulesLastQueuedTimestamp.WithLabelValues("IPv4").SetToCurrentTime()
	ProxyHealthzTotal.WithLabelValues(CodeOK).Inc()
	ProxyLivezTotal.WithLabelValues(CodeOK).Inc()
	NetlinkOperationsTotal.WithLabelValues(SubsystemIPVS, OpAdd).Inc()
	SyncObjectsChanged.WithLabelValues(SubsystemIPVS).Observe(3)
	DriftRepairedTotal.WithLabelValues(SubsystemIPVS).Inc()
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return rec.Code, string(body)
}

func TestMetricsExported(t *testing.T) {
	Register()
	Register() // must be idempotent
	touch()

	code, body := get(t, NewHandler(HandlerOptions{}), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d", code)
	}
	for _, want := range []string{
		"kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\"",
		"kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\"",
		"kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\"",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
		"kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.25\"}",
		"kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"300\"}",
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending ",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total ",
		"kubeproxy_sync_proxy_rules_service_changes_pending ",
		"kubeproxy_sync_proxy_rules_service_changes_total ",
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"}",
		"kubeproxy_proxy_healthz_total{code=\"200\"}",
		"kubeproxy_proxy_livez_total{code=\"200\"}",
		"kubeipvsproxy_netlink_operations_total{op=\"add\",subsystem=\"ipvs\"}",
		"kubeipvsproxy_sync_objects_changed_bucket{subsystem=\"ipvs\",le=\"0\"}",
		"kubeipvsproxy_drift_repaired_total{subsystem=\"ipvs\"}",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestHandlerRoutes(t *testing.T) {
	tests := []struct {
		name      string
		profiling bool
		path      string
		wantCode  int
		wantBody  string
	}{
		{name: "healthz", path: "/healthz", wantCode: http.StatusOK, wantBody: "ok"},
		{name: "proxyMode", path: "/proxyMode", wantCode: http.StatusOK, wantBody: "ipvs"},
		{name: "pprof off by default", path: "/debug/pprof/", wantCode: http.StatusNotFound},
		{name: "pprof cmdline off", path: "/debug/pprof/cmdline", wantCode: http.StatusNotFound},
		{name: "pprof on", profiling: true, path: "/debug/pprof/", wantCode: http.StatusOK, wantBody: "goroutine"},
		{name: "pprof cmdline on", profiling: true, path: "/debug/pprof/cmdline", wantCode: http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := get(t, NewHandler(HandlerOptions{EnableProfiling: tc.profiling}), tc.path)
			if code != tc.wantCode {
				t.Fatalf("GET %s: status %d, want %d", tc.path, code, tc.wantCode)
			}
			if !strings.Contains(body, tc.wantBody) {
				t.Errorf("GET %s: body %q lacks %q", tc.path, body, tc.wantBody)
			}
		})
	}
}

func TestServe(t *testing.T) {
	t.Run("empty address disables", func(t *testing.T) {
		if err := Serve(context.Background(), "", http.NotFoundHandler()); err != nil {
			t.Fatalf("Serve(\"\"): %v", err)
		}
	})
	t.Run("bad address", func(t *testing.T) {
		if err := Serve(context.Background(), "not-an-address", http.NotFoundHandler()); err == nil {
			t.Fatal("Serve(bad address): want error")
		}
	})
	t.Run("serves until cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		ln, err := Listen(ctx, "127.0.0.1:0")
		if err != nil {
			t.Fatalf("Listen: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- ServeListener(ctx, ln, NewHandler(HandlerOptions{})) }()

		resp, err := http.Get("http://" + ln.Addr().String() + "/proxyMode")
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if string(body) != ProxyMode {
			t.Errorf("/proxyMode = %q", body)
		}

		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeListener after cancel: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("ServeListener did not return after cancel")
		}
	})
}
