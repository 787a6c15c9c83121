package ipvs

import (
	"errors"
	"slices"
	"syscall"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// A scheduler the kernel cannot load is refused by the planner: the
// Service gets the global scheduler and a SchedulerUnavailable problem;
// each name is probed once.
func TestUnavailableSchedulerFallsBack(t *testing.T) {
	var probed []string
	s := NewSchedulers(func(name string) error {
		probed = append(probed, name)
		if name == "twos" {
			return syscall.ENOENT
		}
		return nil
	})
	snap := snapshot(
		svcAnnotated(svc("default", "twos", ips("10.96.20.1"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
			AnnotationScheduler, "twos"),
		svcAnnotated(svc("default", "sh", ips("10.96.20.2"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
			AnnotationScheduler, "sh"),
		svcAnnotated(svc("default", "bogus", ips("10.96.20.3"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
			AnnotationScheduler, "fastest"),
		svc("default", "plain", ips("10.96.20.4"), port("http", v1.ProtocolTCP, 80, 0, ep("10.244.1.2", 80, "ready"))),
	)
	names := AnnotatedSchedulers(snap, nil)
	if want := []string{"fastest", "sh", "twos"}; !slices.Equal(names, want) {
		t.Fatalf("AnnotatedSchedulers = %v, want %v", names, want)
	}
	s.Ensure(names...)
	s.Ensure(AnnotatedSchedulers(snap, []servicecache.ServiceKey{key("default", "twos")})...)
	if want := []string{"sh", "twos"}; !slices.Equal(probed, want) {
		t.Errorf("probed %v, want each valid name once: %v", probed, want)
	}
	if s.Available("twos") || !s.Available("sh") || !s.Available("wlc") {
		t.Errorf("Available: twos %v sh %v wlc (never probed) %v", s.Available("twos"), s.Available("sh"), s.Available("wlc"))
	}
	if !errors.Is(s.Unavailable("twos"), syscall.ENOENT) {
		t.Errorf("Unavailable(twos) = %v", s.Unavailable("twos"))
	}

	for _, plan := range []struct {
		name string
		d    *Desired
	}{
		{"full", Plan(snap, Config{SchedulerAvailable: s.Available})},
		{"incremental", PlanServices(snap, []servicecache.ServiceKey{key("default", "twos"), key("default", "sh")}, Config{SchedulerAvailable: s.Available})},
	} {
		t.Run(plan.name, func(t *testing.T) {
			want := map[string]string{"10.96.20.1": "rr", "10.96.20.2": "sh"}
			for k, vs := range plan.d.VirtualServers {
				if w, ok := want[k.Addr.String()]; ok && vs.Scheduler != w {
					t.Errorf("%s: scheduler %q, want %q", k, vs.Scheduler, w)
				}
			}
			var got []string
			for _, p := range plan.d.Problems {
				if p.Reason == ReasonSchedulerUnavailable {
					got = append(got, p.Service.String()+": "+p.Message)
				}
			}
			want2 := []string{`default/twos: annotation ipvs.kube-ipvs-proxy.io/scheduler: this node's kernel cannot load scheduler "twos" (no module ip_vs_twos), using "rr"`}
			if !slices.Equal(got, want2) {
				t.Errorf("problems %v, want %v", got, want2)
			}
		})
	}
}
