package kubelet

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestAllocator(t *testing.T) {
	type step struct {
		op    string // alloc, release, reserve
		owner string
		ip    string // expected (alloc) or wanted (reserve); "err" for an error
	}
	tests := []struct {
		name  string
		cidr  string
		steps []step
	}{
		{name: "sequential from .2", cidr: "10.244.1.0/24", steps: []step{
			{"alloc", "a", "10.244.1.2"}, {"alloc", "b", "10.244.1.3"}, {"alloc", "a", "10.244.1.2"},
		}},
		{name: "released IP is not reused at once", cidr: "10.244.1.0/24", steps: []step{
			{"alloc", "a", "10.244.1.2"}, {"release", "a", ""}, {"alloc", "b", "10.244.1.3"},
		}},
		{name: "wraps around and skips used", cidr: "10.0.0.0/29", steps: []step{
			// .1 gateway, .2-.6 pods, .7 broadcast
			{"alloc", "a", "10.0.0.2"}, {"alloc", "b", "10.0.0.3"}, {"alloc", "c", "10.0.0.4"},
			{"alloc", "d", "10.0.0.5"}, {"alloc", "e", "10.0.0.6"}, {"alloc", "f", "err"},
			{"release", "b", ""}, {"alloc", "f", "10.0.0.3"}, {"release", "a", ""}, {"alloc", "g", "10.0.0.2"},
		}},
		{name: "reserve", cidr: "10.244.2.0/24", steps: []step{
			{"reserve", "a", "10.244.2.2"}, {"alloc", "b", "10.244.2.3"}, {"reserve", "c", "10.244.2.3"},
			{"reserve", "c", "10.244.2.1"}, {"reserve", "c", "10.244.2.255"}, {"reserve", "c", "10.244.3.5"},
			{"reserve", "a", "10.244.2.2"}, {"reserve", "a", "10.244.2.9"}, {"reserve", "c", "10.244.2.9"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewAllocator(tc.cidr)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				switch s.op {
				case "alloc":
					ip, err := a.Allocate(s.owner)
					got := ip.String()
					if err != nil {
						got = "err"
					}
					if got != s.ip {
						t.Fatalf("step %d: Allocate(%s) = %s (%v), want %s", i, s.owner, got, err, s.ip)
					}
				case "release":
					a.Release(s.owner)
				case "reserve":
					err := a.Reserve(s.owner, netip.MustParseAddr(s.ip))
					cur := a.byOwner[s.owner]
					wantOK := cur == netip.MustParseAddr(s.ip)
					if (err == nil) != wantOK {
						t.Fatalf("step %d: Reserve(%s, %s) = %v, owner has %s", i, s.owner, s.ip, err, cur)
					}
				}
			}
		})
	}
}

func TestPodCIDRs(t *testing.T) {
	for _, tc := range []struct {
		in, v4, v6 string // v4 "" for an error
	}{
		{in: "10.244.1.0/24", v4: "10.244.1.0/24"},
		{in: "10.244.1.0/24,fd00:10:244:1::/64", v4: "10.244.1.0/24", v6: "fd00:10:244:1::/64"},
		{in: "10.244.1.0/24, fd00:10:244:1::/64", v4: "10.244.1.0/24", v6: "fd00:10:244:1::/64"},
		{in: "fd00:10:244:1::/64"},
		{in: "fd00:10:244:1::/64,10.244.1.0/24"},
		{in: "10.244.1.0/24,10.244.2.0/24"},
		{in: "10.244.1.0/24,fd00:10:244:1::/64,fd00:10:244:2::/64"},
		{in: "10.244.1.0/24,"},
	} {
		a4, a6, err := newAllocators(tc.in)
		if tc.v4 == "" {
			if err == nil {
				t.Errorf("newAllocators(%q) accepted", tc.in)
			}
			continue
		}
		if err != nil || a4.Prefix().String() != tc.v4 || (a6 == nil) != (tc.v6 == "") || (a6 != nil && a6.Prefix().String() != tc.v6) {
			t.Errorf("newAllocators(%q) = %v, %v, %v", tc.in, a4, a6, err)
		}
	}
	a6, err := NewAllocator("fd00:10:244:1::/64")
	if err != nil {
		t.Fatal(err)
	}
	if ip, err := a6.Allocate("x"); err != nil || ip.String() != "fd00:10:244:1::2" {
		t.Errorf("first IPv6 pod address %s, %v", ip, err)
	}
}

func TestInternalIPs(t *testing.T) {
	node := &v1.Node{Status: v1.NodeStatus{Addresses: []v1.NodeAddress{
		{Type: v1.NodeHostName, Address: "node1"},
		{Type: v1.NodeInternalIP, Address: "172.30.0.11"},
		{Type: v1.NodeExternalIP, Address: "192.0.2.1"},
		{Type: v1.NodeInternalIP, Address: "172.30.0.99"},
		{Type: v1.NodeInternalIP, Address: "fd00:172:30::11"},
	}}}
	if got := internalIPs(node); !reflect.DeepEqual(got, []string{"172.30.0.11", "fd00:172:30::11"}) {
		t.Errorf("internalIPs = %v", got)
	}
}

func TestAllocatorRejects(t *testing.T) {
	for _, cidr := range []string{"", "10.0.0.0/31", "10.0.0.0/32", "10.0.0.0/30x"} {
		if _, err := NewAllocator(cidr); err == nil {
			t.Errorf("NewAllocator(%q) accepted", cidr)
		}
	}
	a, err := NewAllocator("10.0.0.0/30") // .1 gateway, .2 the only pod, .3 broadcast
	if err != nil {
		t.Fatal(err)
	}
	if a.Gateway().String() != "10.0.0.1" {
		t.Errorf("gateway %s", a.Gateway())
	}
	if ip, err := a.Allocate("x"); err != nil || ip.String() != "10.0.0.2" {
		t.Errorf("Allocate = %s, %v", ip, err)
	}
	if _, err := a.Allocate("y"); err == nil {
		t.Error("second pod in a /30 allocated")
	}
}

func TestReadinessStateMachine(t *testing.T) {
	tests := []struct {
		name      string
		success   int
		failure   int
		results   string // s = success, f = failure
		wantReady string // readiness after each result: R or N
	}{
		{name: "defaults: first success makes ready", success: 1, failure: 3, results: "s", wantReady: "R"},
		{name: "starts not ready", success: 1, failure: 3, results: "ff", wantReady: "NN"},
		{name: "failure threshold", success: 1, failure: 3, results: "sfffs", wantReady: "RRRNR"},
		{name: "interrupted failures keep ready", success: 1, failure: 2, results: "sfsfs", wantReady: "RRRRR"},
		{name: "success threshold", success: 2, failure: 1, results: "ssfsss", wantReady: "NRNNRR"},
		{name: "interrupted successes stay not ready", success: 3, failure: 1, results: "ssfsss", wantReady: "NNNNNR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newReadiness(timingOf(&v1.Probe{SuccessThreshold: int32(tc.success), FailureThreshold: int32(tc.failure)}))
			var got strings.Builder
			for _, c := range tc.results {
				if r.observe(c == 's') {
					got.WriteByte('R')
				} else {
					got.WriteByte('N')
				}
			}
			if got.String() != tc.wantReady {
				t.Errorf("results %s: readiness %s, want %s", tc.results, got.String(), tc.wantReady)
			}
			r.reset()
			if r.ready {
				t.Error("ready after reset")
			}
		})
	}
}

func TestProbeTimingDefaults(t *testing.T) {
	got := timingOf(&v1.Probe{})
	want := probeTiming{Period: 10 * time.Second, Timeout: time.Second, SuccessThreshold: 1, FailureThreshold: 3}
	if got != want {
		t.Errorf("defaults %+v, want %+v", got, want)
	}
	got = timingOf(&v1.Probe{InitialDelaySeconds: 2, PeriodSeconds: 1, TimeoutSeconds: 3, SuccessThreshold: 2, FailureThreshold: 1})
	want = probeTiming{InitialDelay: 2 * time.Second, Period: time.Second, Timeout: 3 * time.Second, SuccessThreshold: 2, FailureThreshold: 1}
	if got != want {
		t.Errorf("explicit %+v, want %+v", got, want)
	}
}

func TestProbePort(t *testing.T) {
	p := &prober{container: &v1.Container{Ports: []v1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}
	tests := []struct {
		in   intstr.IntOrString
		want int
		err  bool
	}{
		{in: intstr.FromInt32(81), want: 81},
		{in: intstr.FromString("http"), want: 8080},
		{in: intstr.FromString("9090"), want: 9090},
		{in: intstr.FromString("nope"), err: true},
		{in: intstr.FromInt32(0), err: true},
	}
	for _, tc := range tests {
		got, err := p.port(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("port(%v) = %d, %v", tc.in.String(), got, err)
		}
	}
}

func testPod() *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", UID: "0123abcd-0000-4000-8000-000000000001", Generation: 1},
		Spec:       v1.PodSpec{NodeName: "node1", Containers: []v1.Container{{Name: "echo", Image: "labecho"}}},
		Status: v1.PodStatus{Phase: v1.PodPending, QOSClass: v1.PodQOSBestEffort,
			Conditions: []v1.PodCondition{{Type: "example.com/gate", Status: v1.ConditionTrue}}},
	}
}

// roundTrip is what the API does to a status: JSON with second precision.
func roundTrip(t *testing.T, st v1.PodStatus) v1.PodStatus {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var out v1.PodStatus
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func condition(st v1.PodStatus, typ v1.PodConditionType) *v1.PodCondition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == typ {
			return &st.Conditions[i]
		}
	}
	return nil
}

func TestBuildStatus(t *testing.T) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	podIP := []netip.Addr{netip.MustParseAddr("10.244.1.7")}
	dual := []netip.Addr{netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("fd00:10:244:1::7")}
	host := []string{"172.30.0.11"}
	running := procState{Running: true, StartedAt: t0, Generation: 1}
	tests := []struct {
		name        string
		rt          podRuntime
		phase       v1.PodPhase
		ready       bool
		podIPs      []string // status.podIPs; status.podIP is the first
		hostIPs     []string
		stateReason string // "running" or the waiting reason
		restarts    int32
	}{
		{name: "creating", rt: podRuntime{Started: t0, Proc: procState{Waiting: "ContainerCreating"}}, phase: v1.PodPending, stateReason: "ContainerCreating"},
		{name: "running not ready", rt: podRuntime{PodIPs: podIP, HostIPs: host, Proc: running, Started: t0}, phase: v1.PodRunning, podIPs: []string{"10.244.1.7"}, hostIPs: host, stateReason: "running"},
		{name: "ready", rt: podRuntime{PodIPs: podIP, HostIPs: host, Proc: running, Ready: true, Started: t0}, phase: v1.PodRunning, ready: true, podIPs: []string{"10.244.1.7"}, hostIPs: host, stateReason: "running"},
		{name: "crash loop", rt: podRuntime{PodIPs: podIP, Started: t0, Proc: procState{Generation: 2, Restarts: 2, Waiting: "CrashLoopBackOff",
			LastExit: &exitInfo{Code: 1, StartedAt: t0, FinishedAt: t0.Add(time.Second)}}}, phase: v1.PodRunning, podIPs: []string{"10.244.1.7"}, stateReason: "CrashLoopBackOff", restarts: 2},
		{name: "dual-stack", rt: podRuntime{PodIPs: dual, HostIPs: []string{"172.30.0.11", "fd00:172:30::11"}, Proc: running, Ready: true, Started: t0},
			phase: v1.PodRunning, ready: true, podIPs: []string{"10.244.1.7", "fd00:10:244:1::7"}, hostIPs: []string{"172.30.0.11", "fd00:172:30::11"}, stateReason: "running"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod()
			st := buildStatus(pod, tc.rt, t0)
			first := func(s []string) string {
				if len(s) == 0 {
					return ""
				}
				return s[0]
			}
			if st.Phase != tc.phase || st.PodIP != first(tc.podIPs) || st.HostIP != first(tc.hostIPs) || podReady(st) != tc.ready {
				t.Fatalf("phase %s podIP %q hostIP %q ready %v", st.Phase, st.PodIP, st.HostIP, podReady(st))
			}
			var podIPs, hostIPs []string
			for _, ip := range st.PodIPs {
				podIPs = append(podIPs, ip.IP)
			}
			for _, ip := range st.HostIPs {
				hostIPs = append(hostIPs, ip.IP)
			}
			if !reflect.DeepEqual(podIPs, tc.podIPs) {
				t.Errorf("podIPs %v, want %v", podIPs, tc.podIPs)
			}
			if !reflect.DeepEqual(hostIPs, tc.hostIPs) {
				t.Errorf("hostIPs %v, want %v", hostIPs, tc.hostIPs)
			}
			if st.QOSClass != v1.PodQOSBestEffort || condition(st, "example.com/gate") == nil {
				t.Error("fields owned by others were dropped")
			}
			for _, c := range []v1.PodConditionType{v1.PodScheduled, v1.PodInitialized, v1.ContainersReady, v1.PodReady} {
				if condition(st, c) == nil {
					t.Errorf("condition %s missing", c)
				}
			}
			if got := condition(st, v1.ContainersReady).Status == v1.ConditionTrue; got != tc.ready {
				t.Errorf("ContainersReady %v", got)
			}
			if len(st.ContainerStatuses) != 1 {
				t.Fatalf("container statuses %v", st.ContainerStatuses)
			}
			cs := st.ContainerStatuses[0]
			if cs.Name != "echo" || cs.Image != "labecho" || cs.Ready != tc.ready || cs.RestartCount != tc.restarts {
				t.Errorf("container status %+v", cs)
			}
			switch {
			case tc.stateReason == "running":
				if cs.State.Running == nil || !*cs.Started {
					t.Errorf("state %+v", cs.State)
				}
			case cs.State.Waiting == nil || cs.State.Waiting.Reason != tc.stateReason:
				t.Errorf("state %+v, want waiting %s", cs.State, tc.stateReason)
			}
			if tc.rt.Proc.LastExit != nil && (cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != 1) {
				t.Errorf("last state %+v", cs.LastTerminationState)
			}

			// Written, read back from the API and rebuilt later: nothing
			// to write again.
			pod.Status = roundTrip(t, st)
			again := buildStatus(pod, tc.rt, t0.Add(time.Minute))
			if !statusEqual(pod.Status, again) {
				t.Errorf("status changes without a state change:\n%+v\n%+v", pod.Status, again)
			}
		})
	}
}

func TestBuildStatusTransitionTimes(t *testing.T) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	pod := testPod()
	rt := podRuntime{PodIPs: []netip.Addr{netip.MustParseAddr("10.244.1.7")}, Proc: procState{Running: true, StartedAt: t0, Generation: 1}, Started: t0}
	pod.Status = buildStatus(pod, rt, t0)
	sched := condition(pod.Status, v1.PodScheduled).LastTransitionTime

	rt.Ready = true
	t1 := t0.Add(10 * time.Second)
	st := buildStatus(pod, rt, t1)
	if got := condition(st, v1.PodReady); got.Status != v1.ConditionTrue || !got.LastTransitionTime.Time.Equal(t1) {
		t.Errorf("Ready %+v, want True since %s", got, t1)
	}
	if got := condition(st, v1.PodScheduled).LastTransitionTime; !got.Equal(&sched) {
		t.Errorf("PodScheduled moved from %s to %s", sched, got)
	}
	if st.StartTime == nil || !st.StartTime.Time.Equal(t0) {
		t.Errorf("startTime %v", st.StartTime)
	}
}

func TestRestartsBefore(t *testing.T) {
	pod := testPod()
	if n := restartsBefore(pod); n != 0 {
		t.Errorf("fresh pod: %d", n)
	}
	pod.Status.ContainerStatuses = []v1.ContainerStatus{{Name: "echo", RestartCount: 3, State: v1.ContainerState{Running: &v1.ContainerStateRunning{}}}}
	if n := restartsBefore(pod); n != 4 {
		t.Errorf("pod from a previous run: %d, want 4", n)
	}
}

func TestContainerArgvAndEnv(t *testing.T) {
	pod := testPod()
	tests := []struct {
		name string
		c    v1.Container
		want []string
	}{
		{name: "image only", c: v1.Container{}, want: []string{"/bin/labecho", "serve"}},
		{name: "args only", c: v1.Container{Args: []string{"serve", "--udp", ""}}, want: []string{"/bin/labecho", "serve", "--udp", ""}},
		{name: "command", c: v1.Container{Command: []string{"/bin/sh", "-c"}, Args: []string{"sleep 1"}}, want: []string{"/bin/sh", "-c", "sleep 1"}},
		{name: "expansion", c: v1.Container{Args: []string{"serve", "--tcp", "$(PORT)", "$(NOPE)", "$$(PORT)", "$(POD_NAME)"},
			Env: []v1.EnvVar{{Name: "PORT", Value: "9000"}}},
			want: []string{"/bin/labecho", "serve", "--tcp", "9000", "$(NOPE)", "$(PORT)", "web-1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := containerEnv(pod, &tc.c, []netip.Addr{netip.MustParseAddr("10.244.1.7")}, []string{"172.30.0.11"})
			if got := containerArgv(&tc.c, "/bin/labecho", env); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("argv %q, want %q", got, tc.want)
			}
		})
	}
	c := v1.Container{Env: []v1.EnvVar{
		{Name: "A", Value: "x-$(POD_IP)"},
		{Name: "POD_NAME", Value: "override"},
		{Name: "HOST", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
		{Name: "HOSTS", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.hostIPs"}}},
		{Name: "IPS", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.podIPs"}}},
		{Name: "IP", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "SECRET", ValueFrom: &v1.EnvVarSource{SecretKeyRef: &v1.SecretKeySelector{Key: "k"}}},
	}}
	env := map[string]string{}
	dual := []netip.Addr{netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("fd00:10:244:1::7")}
	for _, kv := range containerEnv(pod, &c, dual, []string{"172.30.0.11", "fd00:172:30::11"}) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v // later entries win, as in exec
	}
	want := map[string]string{"POD_NAMESPACE": "ns", "POD_IP": "10.244.1.7", "NODE_NAME": "node1", "A": "x-10.244.1.7", "POD_NAME": "override", "HOST": "172.30.0.11",
		"HOSTS": "172.30.0.11,fd00:172:30::11", "IPS": "10.244.1.7,fd00:10:244:1::7", "IP": "10.244.1.7"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("env %s=%q, want %q", k, env[k], v)
		}
	}
	if _, ok := env["SECRET"]; ok {
		t.Error("unsupported valueFrom was set")
	}
}

func TestNames(t *testing.T) {
	tests := []struct {
		uid  string
		want string
	}{
		{uid: "0123ABCD-0000-4000-8000-000000000001", want: "0123abcd"},
		{uid: "uid-1", want: ""}, // hashed
	}
	for _, tc := range tests {
		id := shortID(typesUID(tc.uid))
		if len(id) != 8 || !isHex(id) || (tc.want != "" && id != tc.want) {
			t.Errorf("shortID(%q) = %q", tc.uid, id)
		}
		if n := VethName(typesUID(tc.uid)); len(n) > 15 {
			t.Errorf("veth name %q too long", n)
		}
	}
	if got := UnreadyFile("/run/lab", "ns", "web-1"); got != "/run/lab/pods/ns/web-1/unready" {
		t.Errorf("UnreadyFile = %s", got)
	}
	if got := LogFile("/run/lab", "ns", "web-1"); got != "/run/lab/pods/ns_web-1.log" {
		t.Errorf("LogFile = %s", got)
	}
}

func TestRecordStore(t *testing.T) {
	s, err := newRecordStore(t.TempDir(), "node1")
	if err != nil {
		t.Fatal(err)
	}
	for i := 3; i > 0; i-- {
		r := podRecord{UID: typesUID(fmt.Sprint(i)), Netns: fmt.Sprintf("p%08d", i), IP: fmt.Sprintf("10.0.0.%d", i)}
		if err := s.save(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.remove("p00000002"); err != nil {
		t.Fatal(err)
	}
	if err := s.remove("p00000002"); err != nil {
		t.Errorf("second remove: %v", err)
	}
	recs, errs := s.load()
	if len(errs) != 0 || len(recs) != 2 || recs[0].Netns != "p00000001" || recs[1].IP != "10.0.0.3" {
		t.Errorf("load = %+v, %v", recs, errs)
	}
	if uid, ok := s.owner("p00000003"); !ok || uid != "3" {
		t.Errorf("owner = %q, %v", uid, ok)
	}
}

func TestExpandVarsEdges(t *testing.T) {
	vars := map[string]string{"A": "1"}
	for in, want := range map[string]string{"$": "$", "$(A": "$(A", "x$(A)y": "x1y", "$x": "$x", "$$": "$"} {
		if got := expandVars(in, vars); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}
