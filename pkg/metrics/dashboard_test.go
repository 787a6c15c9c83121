package metrics

import (
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
)

// The Grafana dashboard in docs/grafana queries only metrics the proxy
// exports (a renamed metric would leave a panel empty).
func TestDashboardUsesExportedMetrics(t *testing.T) {
	data, err := os.ReadFile("../../docs/grafana/kube-ipvs-proxy.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("the dashboard is not valid JSON: %v", err)
	}
	Register()
	touch()
	code, body := get(t, NewHandler(HandlerOptions{}), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d", code)
	}
	name := regexp.MustCompile(`\b(kubeproxy|kubeipvsproxy)_[a-z_]+`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				n++
				if !strings.Contains(body, "\n"+m+"{") && !strings.Contains(body, "\n"+m+" ") {
					t.Errorf("panel %q queries %s, which /metrics does not export", p.Title, m)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("the dashboard queries no metric")
	}
}
