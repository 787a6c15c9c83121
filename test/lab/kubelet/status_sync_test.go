package kubelet

import (
	"context"
	"io"
	"log"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestSyncStatusWritesOnlyChanges drives a pod worker's status sync
// against a fake API: one write per change, none when nothing changed,
// including when the API normalizes what it stores and after a conflict.
func TestSyncStatusWritesOnlyChanges(t *testing.T) {
	tests := []struct {
		name string
		// server mangles status updates: "normalize" drops
		// observedGeneration (as an API without that field would),
		// "conflict" fails the first write with a conflict.
		server     string
		wantWrites int32
	}{
		{name: "plain", wantWrites: 2},
		{name: "server normalizes", server: "normalize", wantWrites: 2},
		{name: "conflict is retried", server: "conflict", wantWrites: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod()
			client := fake.NewClientset(pod)
			var writes, conflicts atomic.Int32
			client.PrependReactor("update", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				if a.GetSubresource() != "status" {
					return false, nil, nil
				}
				writes.Add(1)
				obj := a.(k8stesting.UpdateAction).GetObject().(*v1.Pod)
				switch tc.server {
				case "normalize":
					obj.Status.ObservedGeneration = 0
				case "conflict":
					if conflicts.Add(1) == 1 {
						return true, nil, apierrors.NewConflict(v1.Resource("pods"), obj.Name, nil)
					}
				}
				return false, nil, nil
			})
			w := &podWorker{k: &Kubelet{client: client, log: log.New(io.Discard, "", 0)},
				uid: pod.UID, ns: pod.Namespace, nm: pod.Name, pod: pod}
			rt := podRuntime{PodIPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, HostIPs: []string{"172.30.0.11"},
				Proc: procState{Running: true, StartedAt: time.Now(), Generation: 1}, Started: time.Now()}
			ctx := context.Background()
			for range 5 {
				w.syncStatus(ctx, rt)
			}
			rt.Ready = true
			for range 5 {
				w.syncStatus(ctx, rt)
			}
			if got := writes.Load(); got != tc.wantWrites {
				t.Errorf("%d status writes, want %d", got, tc.wantWrites)
			}
			stored, err := client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !podReady(stored.Status) || stored.Status.PodIP != "10.244.1.5" || stored.Status.HostIP != "172.30.0.11" {
				t.Errorf("stored status %+v", stored.Status)
			}
		})
	}
}
