package kubelet

import (
	"context"
	"fmt"
	"io"
	"log"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestSchedulerPick(t *testing.T) {
	s, err := NewScheduler(fake.NewClientset(), []string{"node1", "node2", "node3"}, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	pinned := &v1.Pod{Spec: v1.PodSpec{NodeSelector: map[string]string{hostnameLabel: "node3"}}}
	unknown := &v1.Pod{Spec: v1.PodSpec{NodeSelector: map[string]string{hostnameLabel: "node9"}}}
	plain := &v1.Pod{}
	tests := []struct {
		pod  *v1.Pod
		want string
	}{
		{plain, "node1"}, {plain, "node2"}, {pinned, "node3"}, {plain, "node3"},
		{plain, "node1"}, {unknown, "node2"}, {plain, "node3"}, {plain, "node1"},
	}
	for i, tc := range tests {
		if got := s.pick(tc.pod); got != tc.want {
			t.Errorf("pick %d = %s, want %s", i, got, tc.want)
		}
	}
	if _, err := NewScheduler(fake.NewClientset(), nil, nil); err == nil {
		t.Error("no nodes accepted")
	}
}

// bindingReactor makes the fake API apply bindings the way the real one
// does: spec.nodeName is set, and a bound pod cannot be bound again.
func bindingReactor(t *testing.T, client *fake.Clientset, mu *sync.Mutex, bound map[string]string) {
	client.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := action.(k8stesting.CreateAction)
		if !ok || ca.GetSubresource() != "binding" {
			return false, nil, nil
		}
		b := ca.GetObject().(*v1.Binding)
		obj, err := client.Tracker().Get(v1.SchemeGroupVersion.WithResource("pods"), b.Namespace, b.Name)
		if err != nil {
			return true, nil, err
		}
		pod := obj.(*v1.Pod).DeepCopy()
		if pod.Spec.NodeName != "" {
			return true, nil, fmt.Errorf("pod %s already bound", pod.Name)
		}
		pod.Spec.NodeName = b.Target.Name
		mu.Lock()
		bound[pod.Name] = b.Target.Name
		mu.Unlock()
		return true, nil, client.Tracker().Update(v1.SchemeGroupVersion.WithResource("pods"), pod, pod.Namespace)
	})
}

func TestSchedulerBindsRoundRobin(t *testing.T) {
	var objs []runtime.Object
	for i := range 4 {
		objs = append(objs, &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("p%d", i), UID: typesUID(fmt.Sprintf("u%d", i))}})
	}
	objs = append(objs, &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "already", UID: "u9"}, Spec: v1.PodSpec{NodeName: "node2"}})
	client := fake.NewClientset(objs...)
	var mu sync.Mutex
	bound := map[string]string{}
	bindingReactor(t, client, &mu, bound)

	s, err := NewScheduler(client, []string{"node1", "node2"}, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(bound)
		mu.Unlock()
		if n >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bound only %v", bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	perNode := map[string]int{}
	for _, n := range bound {
		perNode[n]++
	}
	if perNode["node1"] != 2 || perNode["node2"] != 2 || len(bound) != 4 {
		t.Errorf("bindings %v: want two pods on each node", bound)
	}
	if _, ok := bound["already"]; ok {
		t.Error("a bound pod was bound again")
	}
}
