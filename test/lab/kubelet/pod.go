package kubelet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
)

// tick is how often a pod worker looks at its unready file, its probe
// schedule and its status; short so that tests flipping readiness see it
// quickly.
const tick = 250 * time.Millisecond

// podWorker owns one pod from first sight to teardown. Informer events only
// hand it the newest object; everything else happens on its goroutine.
type podWorker struct {
	k   *Kubelet
	uid types.UID
	ns  string
	nm  string

	mu     sync.Mutex
	latest *v1.Pod
	gone   bool
	notify chan struct{}

	done chan struct{}

	// Owned by the worker goroutine.
	pod        *v1.Pod
	statusFail time.Time // last failed status write, for retry pacing
	// The last status sent and what the API stored from it. When the API
	// normalizes a field (drops one its version does not know), the
	// stored status never equals the built one; these stop that from
	// becoming a write on every tick.
	lastSent, lastStored *v1.PodStatus
}

func newPodWorker(k *Kubelet, pod *v1.Pod) *podWorker {
	return &podWorker{
		k: k, uid: pod.UID, ns: pod.Namespace, nm: pod.Name,
		notify: make(chan struct{}, 1), done: make(chan struct{}),
	}
}

func (w *podWorker) logf(format string, args ...any) {
	w.k.log.Printf("pod %s/%s (%s): "+format, append([]any{w.ns, w.nm, shortID(w.uid)}, args...)...)
}

func (w *podWorker) poke() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// update hands over a newer object from the informer.
func (w *podWorker) update(pod *v1.Pod) {
	w.mu.Lock()
	if w.latest == nil || !olderRV(pod.ResourceVersion, w.latest.ResourceVersion) {
		w.latest = pod
	}
	w.mu.Unlock()
	w.poke()
}

// deleted says the object is gone from the API.
func (w *podWorker) deleted() {
	w.mu.Lock()
	w.gone = true
	w.mu.Unlock()
	w.poke()
}

// refresh takes the newest informer object unless the worker already holds
// a newer one (its own status write), and reports whether the pod is gone.
func (w *podWorker) refresh() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.latest != nil && (w.pod == nil || !olderRV(w.latest.ResourceVersion, w.pod.ResourceVersion)) {
		w.pod = w.latest
	}
	return w.gone
}

// olderRV compares resource versions when both are numbers (they are, in
// practice, though the API calls them opaque); otherwise nothing is older.
func olderRV(a, b string) bool {
	x, err1 := strconv.ParseUint(a, 10, 64)
	y, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil && x < y
}

// deadline is when a pod being deleted must stop (its deletionTimestamp,
// which the API sets to deletion time + grace period).
func (w *podWorker) deadline() (time.Time, bool) {
	if w.pod.DeletionTimestamp == nil {
		return time.Time{}, false
	}
	return w.pod.DeletionTimestamp.Time, true
}

func (w *podWorker) run(ctx context.Context) {
	defer close(w.done)
	if gone := w.refresh(); gone || w.pod == nil {
		return
	}
	w.logf("assigned to this node")
	if dl, ok := w.deadline(); ok && !time.Now().Before(dl) {
		w.logf("already past its deletion deadline; not starting it")
		w.deleteObject(ctx)
		return
	}

	netw, ok := w.setupNetwork(ctx)
	if !ok {
		return
	}
	pod := w.pod
	c := &pod.Spec.Containers[0]
	env := containerEnv(pod, c, netw.IPs(), w.k.HostIPs())
	argv := append([]string{w.k.ip.path, "netns", "exec", netw.Netns}, containerArgv(c, w.k.cfg.EchoBinary, env)...)
	if err := os.MkdirAll(podControlDir(w.k.cfg.StateDir, w.ns, w.nm), 0o755); err != nil {
		w.logf("control directory: %v", err)
	}
	sup := newSupervisor(argv, env, LogFile(w.k.cfg.StateDir, w.ns, w.nm), restartsBefore(pod),
		w.k.cfg.KillWait, w.logf)
	go sup.run()
	w.logf("starting container %q: %q", c.Name, argv[4:])

	reason := w.serve(ctx, sup, netw, c, env)
	switch reason {
	case exitKubelet:
		if !w.k.cfg.TeardownOnExit {
			sup.abandon()
			w.logf("kubelet exiting; leaving the pod running")
			return
		}
		w.teardown(sup, netw)
	case exitGone:
		w.logf("deleted from the API; tearing down now")
		w.teardown(sup, netw)
	case exitDeadline:
		w.logf("deletion deadline reached; stopping")
		w.teardown(sup, netw)
		w.deleteObject(ctx)
	}
}

type exitReason int

const (
	exitKubelet exitReason = iota
	exitGone
	exitDeadline
)

// setupNetwork allocates the IP and builds the plumbing, retrying until it
// works, the pod goes away or the kubelet stops.
func (w *podWorker) setupNetwork(ctx context.Context) (podNetwork, bool) {
	k := w.k
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		netw, err := w.trySetup(ctx)
		if err == nil {
			w.logf("network ready: %s in netns %s, veth %s in %s", netw, netw.Netns, netw.Veth, netw.NodeNetns)
			return netw, true
		}
		w.logf("network setup attempt %d failed: %v", attempt, err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
		gone := w.refresh()
		dl, deleting := w.deadline()
		if ctx.Err() != nil || gone || (deleting && !time.Now().Before(dl)) {
			// Undo whatever part got built.
			if netw.Netns != "" {
				if err := k.ip.teardown(context.Background(), netw); err == nil {
					_ = k.records.remove(netw.Netns)
				}
			}
			k.release(w.uid)
			if !gone && ctx.Err() == nil {
				w.deleteObject(ctx)
			}
			return podNetwork{}, false
		}
	}
}

func (w *podWorker) trySetup(ctx context.Context) (podNetwork, error) {
	k := w.k
	ip, err := k.alloc.Allocate(string(w.uid))
	if err != nil {
		return podNetwork{}, err
	}
	var ip6 netip.Addr
	if k.alloc6 != nil {
		if ip6, err = k.alloc6.Allocate(string(w.uid)); err != nil {
			return podNetwork{}, err
		}
	}
	netw := podNetwork{
		NodeNetns: k.cfg.NodeNetns, Netns: PodNetnsName(w.uid), Veth: VethName(w.uid),
		IP: ip, Gateway: k.alloc.Gateway(), IP6: ip6,
	}
	if other, ok := k.records.owner(netw.Netns); ok && other != w.uid {
		// Two UIDs with the same first 8 hex digits: never touch the
		// other pod's namespace.
		return podNetwork{}, fmt.Errorf("netns name %s is taken by pod UID %s", netw.Netns, other)
	}
	// The record goes first: a crash between here and the end leaves
	// something a restarted kubelet knows to remove.
	rec := podRecord{UID: w.uid, Namespace: w.ns, Name: w.nm, Netns: netw.Netns, Veth: netw.Veth, IP: ip.String()}
	if ip6.IsValid() {
		rec.IP6 = ip6.String()
	}
	if err := k.records.save(rec); err != nil {
		return netw, err
	}
	return netw, k.ip.setup(ctx, netw)
}

// release frees the pod's IPs.
func (k *Kubelet) release(uid types.UID) {
	k.alloc.Release(string(uid))
	if k.alloc6 != nil {
		k.alloc6.Release(string(uid))
	}
}

// restartsBefore carries the restart count over from a previous kubelet
// run, where the container had already started once.
func restartsBefore(pod *v1.Pod) int32 {
	for _, cs := range pod.Status.ContainerStatuses {
		if len(pod.Spec.Containers) > 0 && cs.Name == pod.Spec.Containers[0].Name {
			if cs.State.Running != nil || cs.LastTerminationState.Terminated != nil {
				return cs.RestartCount + 1
			}
			return cs.RestartCount
		}
	}
	return 0
}

type probeOutcome struct {
	generation int
	err        error
}

// serve runs the pod until it must stop: keeps readiness and status up to
// date, including while the pod is terminating.
func (w *podWorker) serve(ctx context.Context, sup *supervisor, netw podNetwork, c *v1.Container, env []string) exitReason {
	probe := c.ReadinessProbe
	var rd *readiness
	var timing probeTiming
	if probe != nil {
		timing = timingOf(probe)
		rd = newReadiness(timing)
	}
	pr := &prober{ip: w.k.ip, nodeNetns: netw.NodeNetns, podNetns: netw.Netns, podIP: netw.IP, container: c, env: env}
	results := make(chan probeOutcome, 1)
	inflight := false
	lastGen := 0
	var nextProbe time.Time
	var lastProbeErr string
	wasReady := false
	unreadyPath := UnreadyFile(w.k.cfg.StateDir, w.ns, w.nm)
	firstSeen := time.Now()
	ticker := time.NewTicker(tick)
	defer ticker.Stop()

	for {
		if w.refresh() {
			return exitGone
		}
		now := time.Now()
		if dl, ok := w.deadline(); ok && !now.Before(dl) {
			return exitDeadline
		}
		ps := sup.snapshot()
		if ps.Generation != lastGen {
			lastGen = ps.Generation
			if rd != nil {
				rd.reset()
			}
			nextProbe = ps.StartedAt.Add(timing.InitialDelay)
		}
		if rd != nil && ps.Running && !inflight && !now.Before(nextProbe) {
			inflight = true
			nextProbe = now.Add(timing.Period)
			gen := ps.Generation
			go func() {
				pctx, cancel := context.WithTimeout(ctx, timing.Timeout)
				defer cancel()
				results <- probeOutcome{generation: gen, err: pr.run(pctx, probe)}
			}()
		}

		_, statErr := os.Stat(unreadyPath)
		unready := statErr == nil
		ready := ps.Running && (rd == nil || rd.ready) && !unready
		if ready != wasReady {
			why := ""
			switch {
			case ready:
			case !ps.Running:
				why = " (process not running)"
			case unready:
				why = " (" + unreadyPath + " exists)"
			default:
				why = " (readiness probe: " + lastProbeErr + ")"
			}
			w.logf("ready=%v%s", ready, why)
			wasReady = ready
		}
		w.syncStatus(ctx, podRuntime{
			PodIPs: netw.IPs(), HostIPs: w.k.HostIPs(), Proc: ps, Ready: ready, Started: firstSeen,
		})

		select {
		case <-ctx.Done():
			return exitKubelet
		case <-w.notify:
		case <-sup.changed:
		case <-ticker.C:
		case r := <-results:
			inflight = false
			if r.generation == lastGen && rd != nil {
				rd.observe(r.err == nil)
				if r.err != nil {
					lastProbeErr = r.err.Error()
				} else {
					lastProbeErr = ""
				}
			}
		}
	}
}

// syncStatus writes the status if it differs from the API's. A failed
// write is retried on a later tick rather than blocking the pod.
func (w *podWorker) syncStatus(ctx context.Context, rt podRuntime) {
	now := time.Now()
	desired := buildStatus(w.pod, rt, now)
	if statusEqual(w.pod.Status, desired) {
		return
	}
	if w.lastSent != nil && statusEqual(desired, *w.lastSent) && statusEqual(w.pod.Status, *w.lastStored) {
		return
	}
	if !w.statusFail.IsZero() && now.Sub(w.statusFail) < time.Second {
		return
	}
	client := w.k.client.CoreV1().Pods(w.ns)
	cur := w.pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if cur == nil {
			fresh, err := client.Get(ctx, w.nm, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if fresh.UID != w.uid {
				return apierrors.NewNotFound(v1.Resource("pods"), w.nm)
			}
			cur = fresh
		}
		desired := buildStatus(cur, rt, now)
		if statusEqual(cur.Status, desired) {
			w.pod = cur
			return nil
		}
		next := cur.DeepCopy()
		next.Status = desired
		sent := desired
		cur = nil // a conflict means the object moved on: re-read it
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		updated, err := client.UpdateStatus(wctx, next, metav1.UpdateOptions{})
		if err != nil {
			return err
		}
		w.pod = updated
		w.lastSent, w.lastStored = &sent, updated.Status.DeepCopy()
		return nil
	})
	switch {
	case err == nil:
		w.statusFail = time.Time{}
	case apierrors.IsNotFound(err):
		// Deleted: the informer's delete event follows.
		w.statusFail = now
	default:
		if ctx.Err() == nil {
			w.logf("status update failed (will retry): %v", err)
		}
		w.statusFail = now
	}
}

// teardown stops the process and removes the plumbing, the IP and the
// control directory. The record stays if the plumbing could not be
// removed, so that a restarted kubelet tries again.
func (w *podWorker) teardown(sup *supervisor, netw podNetwork) {
	k := w.k
	w.logf("stopping process (SIGTERM, SIGKILL after %s)", k.cfg.KillWait)
	sup.stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = k.ip.teardown(ctx, netw); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		w.logf("network teardown failed: %v", err)
	} else {
		_ = k.records.remove(netw.Netns)
		w.logf("network removed (%s, %s, %s released)", netw.Netns, netw.Veth, netw)
	}
	k.release(w.uid)
	if !k.nameTaken(w.ns, w.nm, w.uid) {
		// A same-named successor (new UID) shares the directory.
		_ = os.RemoveAll(podControlDir(k.cfg.StateDir, w.ns, w.nm))
	}
}

// deleteObject finishes a graceful deletion: grace period 0 with a UID
// precondition, so a new pod of the same name is never hit. It retries
// until it succeeds or ctx ends, as the kubelet does: an API server that is
// down for a minute must not leave the pod Terminating for ever (and its
// namespace with it).
func (w *podWorker) deleteObject(ctx context.Context) {
	zero := int64(0)
	uid := w.uid
	opts := metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}}
	backoff := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := w.k.client.CoreV1().Pods(w.ns).Delete(dctx, w.nm, opts)
		cancel()
		switch {
		case err == nil:
			w.logf("pod object deleted")
			return
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
			// Conflict: the UID precondition failed, the name is a new pod.
			w.logf("pod object already gone")
			return
		}
		if errors.Is(ctx.Err(), context.Canceled) {
			return
		}
		w.logf("deleting pod object failed (attempt %d): %v", attempt, err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
