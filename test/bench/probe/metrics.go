package probe

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Metric names both proxies export (kube-proxy's).
const (
	MetricSyncDurationSum   = "kubeproxy_sync_proxy_rules_duration_seconds_sum"
	MetricSyncDurationCount = "kubeproxy_sync_proxy_rules_duration_seconds_count"
	MetricLastSync          = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
)

// Family is the label value of the IPv4 series; the benchmark's Services
// are IPv4.
const Family = `ip_family="IPv4"`

var httpClient = &http.Client{Timeout: 5 * time.Second}

// scrape fetches a Prometheus text page.
func scrape(url string) (string, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	buf, err := io.ReadAll(resp.Body)
	return string(buf), err
}

// metricValue finds the sample of name whose labels contain label (or any
// sample of name when label is empty).
func metricValue(page, name, label string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(page))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		labels := ""
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // a longer name
		}
		if label != "" && !strings.Contains(labels, label) {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}
