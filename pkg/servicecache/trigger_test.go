package servicecache

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// A changed Service carries the oldest last-change-trigger-time of the
// slices that changed it, for the network programming latency metric.
func TestSnapshotTriggerTimes(t *testing.T) {
	h := newHarness(t)
	h.createService(svcObj("ns", "web", withClusterIPs("10.96.0.10"), withPorts(v1.ServicePort{Name: "http", Port: 80})))
	key := ServiceKey{"ns", "web"}
	h.until("service present", func(s *Snapshot) bool { return s.Service(key) != nil })

	at := time.Date(2026, 11, 26, 12, 0, 0, 123000000, time.UTC)
	slice := sliceObj("ns", "web-1", "web", []discovery.EndpointPort{eport("http", 8080)}, epObj("10.244.1.2"))
	slice.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: at.Format(time.RFC3339Nano)}
	h.createSlice(slice)
	s := h.until("endpoint present", func(s *Snapshot) bool {
		svc := s.Service(key)
		return svc != nil && len(svc.Ports) == 1 && len(svc.Ports[0].Endpoints) == 1
	})
	if got, ok := s.TriggerTimes[key]; !ok || !got.Equal(at) {
		t.Fatalf("trigger time %v (present %v), want %v", got, ok, at)
	}
	// The next snapshot, with nothing changed, has none.
	if s := h.snapshot(); len(s.TriggerTimes) != 0 {
		t.Fatalf("unchanged snapshot has trigger times %v", s.TriggerTimes)
	}
}
