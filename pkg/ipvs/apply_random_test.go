package ipvs

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// TestApplierRandomIncremental drives the applier through random Service
// changes, with random kernel failures, and checks after each step that
// incremental applies end where a full plan would, and that the applier's
// memory matches the kernel.
func TestApplierRandomIncremental(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cfg := Config{NodePortAddresses: ips("192.168.1.10", "fd00:1::10")}
	r := newRig(cfg)
	shared := ips("203.0.113.1", "203.0.113.2")

	// Service i has port 1000+i, so that services may share external IPs
	// without claiming the same virtual server.
	gen := func(i int) *servicecache.Service {
		vip := netip.AddrFrom4([4]byte{10, 96, 0, byte(i)})
		cips := []netip.Addr{vip}
		if rng.IntN(3) == 0 {
			cips = append(cips, netip.MustParseAddr(fmt.Sprintf("fd00:96::%x", i)))
		}
		var eps []servicecache.Endpoint
		for j := range rng.IntN(4) {
			state := []string{"ready", "ready", "terminating", "unready"}[rng.IntN(4)]
			eps = append(eps, ep(fmt.Sprintf("10.244.%d.%d", i, j), 80, state))
			if len(cips) == 2 {
				eps = append(eps, ep(fmt.Sprintf("fd00:244::%x:%x", i, j), 80, state))
			}
		}
		nodePort := uint16(0)
		if rng.IntN(2) == 0 {
			nodePort = uint16(30000 + i)
		}
		proto := []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP}[rng.IntN(2)]
		s := svc("default", fmt.Sprintf("s%02d", i), cips, port("p", proto, uint16(1000+i), nodePort, eps...))
		if rng.IntN(3) == 0 {
			s.ExternalIPs = shared[:1+rng.IntN(2)]
		}
		if rng.IntN(4) == 0 {
			s.AffinityTimeoutSeconds = int32(60 * (1 + rng.IntN(3)))
		}
		return s
	}
	const n = 12
	live := map[int]*servicecache.Service{}
	snap := func() *servicecache.Snapshot {
		var svcs []*servicecache.Service
		for _, s := range live {
			svcs = append(svcs, s)
		}
		return snapshot(svcs...)
	}
	for i := range n / 2 {
		live[i] = gen(i)
	}
	r.reconcile(t, snap())

	failures := 0
	for step := range 200 {
		var changed []servicecache.ServiceKey
		for range 1 + rng.IntN(3) {
			i := rng.IntN(n)
			if _, ok := live[i]; ok && rng.IntN(3) == 0 {
				delete(live, i)
			} else {
				live[i] = gen(i)
			}
			changed = append(changed, key("default", fmt.Sprintf("s%02d", i)))
		}
		s := snap()
		// Sometimes the kernel fails one op of this step.
		var failing string
		if rng.IntN(4) == 0 {
			ops := Diff(r.a.Observed(), &PlanServices(s, changed, cfg).State)
			if len(ops) > 0 {
				failing = ops[rng.IntN(len(ops))].String()
				r.ipvs.FailOn(failing, errBoom)
				r.links.FailOn(failing, errBoom)
			}
		}
		err := r.a.ApplyServices(changed, PlanServices(s, changed, cfg))
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		r.ipvs.FailOn(failing, nil)
		r.links.FailOn(failing, nil)
		if !r.a.NextRetry().IsZero() {
			failures++
			r.pastBackoff()
			if err := r.a.ApplyServices(nil, nil); err != nil {
				t.Fatalf("step %d: retry: %v", step, err)
			}
		}
		r.checkKernel(t, &Plan(s, cfg).State)
		if t.Failed() {
			t.Fatalf("step %d (changed %v, failing %q)", step, changed, failing)
		}
		if step%25 == 0 {
			r.log.Reset()
			r.reconcile(t, s)
			if got := r.log.Lines(); len(got) != 0 {
				t.Fatalf("step %d: reconcile found work:\n%s", step, strings.Join(got, "\n"))
			}
		}
	}
	if failures == 0 {
		t.Error("no step failed: the failure injection tests nothing")
	}
	t.Logf("%d steps had a failing op", failures)
}
