package kubelet

import (
	"context"
	"errors"
	"log"
	"os"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// hostnameLabel lets a pod pin itself to a node with a nodeSelector, the one
// scheduling constraint the lab honours.
const hostnameLabel = "kubernetes.io/hostname"

// Scheduler binds pods without spec.nodeName to nodes, round-robin.
type Scheduler struct {
	client kubernetes.Interface
	nodes  []string
	log    *log.Logger

	mu   sync.Mutex
	next int
}

// NewScheduler schedules over nodes, in that order.
func NewScheduler(client kubernetes.Interface, nodes []string, logger *log.Logger) (*Scheduler, error) {
	if len(nodes) == 0 {
		return nil, errors.New("no nodes to schedule on")
	}
	if logger == nil {
		logger = log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	}
	return &Scheduler{client: client, nodes: append([]string(nil), nodes...), log: logger}, nil
}

// pick chooses the node for a pod: its kubernetes.io/hostname nodeSelector
// if that names one of the nodes, else the next node in turn.
func (s *Scheduler) pick(pod *v1.Pod) string {
	if want := pod.Spec.NodeSelector[hostnameLabel]; want != "" {
		for _, n := range s.nodes {
			if n == want {
				return n
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[s.next%len(s.nodes)]
	s.next = (s.next + 1) % len(s.nodes)
	return n
}

// Run binds pending pods until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", "").String()
		}))
	podInformer := factory.Core().V1().Pods().Informer()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[cache.ObjectName]())
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if pod, ok := obj.(*v1.Pod); ok && pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil {
			queue.Add(cache.MetaObjectToName(pod))
		}
	}
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced) {
		return ctx.Err()
	}
	s.log.Printf("scheduler: binding pending pods round-robin over %v", s.nodes)
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for {
		key, quit := queue.Get()
		if quit {
			return nil
		}
		err := s.schedule(ctx, podInformer.GetStore(), key)
		if err != nil && ctx.Err() == nil {
			s.log.Printf("scheduler: %s: %v (will retry)", key, err)
			queue.AddRateLimited(key)
		} else {
			queue.Forget(key)
		}
		queue.Done(key)
	}
}

func (s *Scheduler) schedule(ctx context.Context, store cache.Store, key cache.ObjectName) error {
	obj, exists, err := store.GetByKey(key.String())
	if err != nil || !exists {
		return err
	}
	pod := obj.(*v1.Pod)
	if pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil {
		return nil
	}
	node := s.pick(pod)
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = s.client.CoreV1().Pods(pod.Namespace).Bind(bctx, &v1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Target:     v1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
	switch {
	case err == nil:
		s.log.Printf("scheduler: bound %s to %s", key, node)
		return nil
	case apierrors.IsNotFound(err):
		return nil // deleted meanwhile
	case apierrors.IsConflict(err):
		// Already bound (another binding won, or a stale cache): the
		// informer drops it once it sees spec.nodeName.
		return nil
	}
	return err
}
