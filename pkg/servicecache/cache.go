package servicecache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
)

// sliceServiceIndex indexes EndpointSlices by "namespace/service".
const sliceServiceIndex = "service"

// Cache watches Services, EndpointSlices and this node's Node and produces
// Snapshots. Event handlers only mark Services dirty; the work of
// converting and merging is done in Snapshot, for the dirty Services only.
type Cache struct {
	nodeName string
	logger   klog.Logger

	factories  []informers.SharedInformerFactory
	svcLister  corelisters.ServiceLister
	nodeLister corelisters.NodeLister
	slices     cache.Indexer
	synced     []cache.InformerSynced

	// mu guards the state written by event handlers.
	mu    sync.Mutex
	dirty map[ServiceKey]struct{}
	// sliceOwner remembers which Service each slice ("ns/name") fed, so a
	// slice that moves to another Service, loses its label or is deleted
	// as a bare tombstone still dirties its previous Service.
	sliceOwner map[string]ServiceKey
	node       Node
	callbacks  []func()
	// triggers holds, per Service, the oldest EndpointSlice
	// last-change-trigger-time seen since the last Snapshot: the start of
	// kubeproxy_network_programming_duration_seconds.
	triggers map[ServiceKey]time.Time

	changes  chan struct{}
	started  atomic.Bool
	isSynced atomic.Bool
	syncedCh chan struct{} // closed once every handler has seen its initial list
	failedCh chan struct{} // closed if Start's context ends before that
	wg       sync.WaitGroup

	// probMu serialises checkNode; it guards nodeProbs.
	probMu    sync.Mutex
	nodeProbs nodeProblemState
	now       func() time.Time

	// snapMu serialises Snapshot callers; it guards the fields below.
	snapMu   sync.Mutex
	services map[ServiceKey]*Service
	last     *Snapshot
}

// Option configures a Cache.
type Option func(*Cache)

// WithLogger sets the logger (default klog.Background()).
func WithLogger(l klog.Logger) Option { return func(c *Cache) { c.logger = l } }

// New builds a Cache for nodeName. Nothing is watched until Start.
func New(client kubernetes.Interface, nodeName string, opts ...Option) (*Cache, error) {
	if client == nil {
		return nil, errors.New("servicecache: nil client")
	}
	if nodeName == "" {
		return nil, errors.New("servicecache: empty node name")
	}
	c := &Cache{
		nodeName:   nodeName,
		logger:     klog.Background(),
		dirty:      map[ServiceKey]struct{}{},
		sliceOwner: map[string]ServiceKey{},
		node:       Node{Name: nodeName},
		changes:    make(chan struct{}, 1),
		syncedCh:   make(chan struct{}),
		failedCh:   make(chan struct{}),
		services:   map[ServiceKey]*Service{},
		now:        time.Now,
	}
	for _, o := range opts {
		o(c)
	}

	// Same server-side filters as kube-proxy: other proxies' Services,
	// headless Services and their slices never reach us. ConvertService
	// checks again, as watch caches may not apply every selector (the fake
	// clientset ignores field selectors).
	noProxyName, err := labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
	if err != nil {
		return nil, fmt.Errorf("servicecache: service selector: %w", err)
	}
	noHeadless, err := labels.NewRequirement(v1.IsHeadlessService, selection.DoesNotExist, nil)
	if err != nil {
		return nil, fmt.Errorf("servicecache: slice selector: %w", err)
	}
	svcFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTransform(stripManagedFields),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labels.NewSelector().Add(*noProxyName).String()
			o.FieldSelector = fields.OneTermNotEqualSelector("spec.clusterIP", v1.ClusterIPNone).String()
		}))
	sliceFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTransform(stripManagedFields),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labels.NewSelector().Add(*noHeadless).String()
		}))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTransform(stripManagedFields),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", nodeName).String()
		}))
	c.factories = []informers.SharedInformerFactory{svcFactory, sliceFactory, nodeFactory}

	svcInf := svcFactory.Core().V1().Services()
	sliceInf := sliceFactory.Discovery().V1().EndpointSlices()
	nodeInf := nodeFactory.Core().V1().Nodes()
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{sliceServiceIndex: indexSliceByService}); err != nil {
		return nil, fmt.Errorf("servicecache: slice index: %w", err)
	}
	c.svcLister = svcInf.Lister()
	c.nodeLister = nodeInf.Lister()
	c.slices = sliceInf.Informer().GetIndexer()

	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{svcInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: c.onService,
			UpdateFunc: func(old, cur any) {
				if !sameVersion(old, cur) {
					c.onService(cur)
				}
			},
			DeleteFunc: c.onService,
		}},
		{sliceInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { c.onSlice(obj, false) },
			UpdateFunc: func(old, cur any) {
				if !sameVersion(old, cur) {
					c.onSlice(cur, false)
				}
			},
			DeleteFunc: func(obj any) { c.onSlice(obj, true) },
		}},
		{nodeInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.onNode(obj, false) },
			UpdateFunc: func(_, cur any) { c.onNode(cur, false) },
			DeleteFunc: func(obj any) { c.onNode(obj, true) },
		}},
	}
	for _, h := range handlers {
		reg, err := h.inf.AddEventHandler(h.h)
		if err != nil {
			return nil, fmt.Errorf("servicecache: add event handler: %w", err)
		}
		// The registration's HasSynced also waits for the handler to have
		// processed the initial list, so the first Snapshot is complete.
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

// Start starts the informers and returns. They stop when ctx ends; call
// Shutdown after that to wait for their goroutines.
func (c *Cache) Start(ctx context.Context) {
	if !c.started.CompareAndSwap(false, true) {
		return
	}
	for _, f := range c.factories {
		f.Start(ctx.Done())
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
			close(c.failedCh)
			return
		}
		c.isSynced.Store(true)
		close(c.syncedCh)
		// Changes seen during the initial list were not announced.
		c.notify()
		c.checkNodeUntil(ctx)
	}()
}

// Shutdown waits for the goroutines started by Start to exit. The context
// given to Start must be cancelled first, or Shutdown blocks.
func (c *Cache) Shutdown() {
	for _, f := range c.factories {
		f.Shutdown()
	}
	c.wg.Wait()
}

// WaitForCacheSync blocks until Services, EndpointSlices and the Node have
// synced (true), or ctx or Start's context ends first (false).
func (c *Cache) WaitForCacheSync(ctx context.Context) bool {
	select {
	case <-c.syncedCh:
		return true
	case <-c.failedCh:
		return false
	case <-ctx.Done():
		return c.isSynced.Load()
	}
}

// HasSynced reports whether the initial lists have been processed.
func (c *Cache) HasSynced() bool { return c.isSynced.Load() }

// OnChange registers f to be called after every relevant change, once the
// cache has synced (and once right after syncing). f runs on informer
// goroutines, possibly concurrently, and must not block; usually it pokes a
// coalescing trigger. Some calls announce events that turn out to change
// nothing (Snapshot's Changed is then empty).
func (c *Cache) OnChange(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.callbacks = append(c.callbacks, f)
}

// Changes returns a channel that receives a value after relevant changes
// (once the cache has synced). It holds at most one pending value, so a
// burst of events coalesces into a single wake-up.
func (c *Cache) Changes() <-chan struct{} { return c.changes }

func (c *Cache) notify() {
	if !c.isSynced.Load() {
		return // the post-sync notification covers this change
	}
	select {
	case c.changes <- struct{}{}:
	default:
	}
	c.mu.Lock()
	cbs := c.callbacks
	c.mu.Unlock()
	for _, f := range cbs {
		f()
	}
}

func (c *Cache) markDirty(keys ...ServiceKey) {
	c.mu.Lock()
	for _, k := range keys {
		c.dirty[k] = struct{}{}
	}
	c.mu.Unlock()
	c.notify()
}

func (c *Cache) onService(obj any) {
	var key ServiceKey
	switch o := obj.(type) {
	case *v1.Service:
		key = ServiceKey{Namespace: o.Namespace, Name: o.Name}
	case cache.DeletedFinalStateUnknown:
		ns, name, err := cache.SplitMetaNamespaceKey(o.Key)
		if err != nil {
			c.logger.Error(err, "Ignoring Service tombstone with a bad key", "key", o.Key)
			return
		}
		key = ServiceKey{Namespace: ns, Name: name}
	default:
		c.logger.Error(nil, "Ignoring unexpected object in Service event", "type", fmt.Sprintf("%T", obj))
		return
	}
	metrics.ServiceChangesTotal.Inc()
	metrics.ServiceChangesPending.Inc()
	c.markDirty(key)
}

func (c *Cache) onSlice(obj any, deleted bool) {
	var slice *discovery.EndpointSlice
	var key string
	switch o := obj.(type) {
	case *discovery.EndpointSlice:
		slice, key = o, o.Namespace+"/"+o.Name
	case cache.DeletedFinalStateUnknown:
		// The last known object may be missing; sliceOwner still knows the
		// Service.
		slice, _ = o.Obj.(*discovery.EndpointSlice)
		key = o.Key
	default:
		c.logger.Error(nil, "Ignoring unexpected object in EndpointSlice event", "type", fmt.Sprintf("%T", obj))
		return
	}
	owner, hasOwner := sliceService(slice)
	if slice != nil && !hasOwner {
		c.logger.V(4).Info("EndpointSlice has no service-name label", "slice", key)
	}

	c.mu.Lock()
	prev, hadPrev := c.sliceOwner[key]
	if hadPrev {
		c.dirty[prev] = struct{}{}
	}
	if hasOwner {
		c.dirty[owner] = struct{}{}
		if t, ok := triggerTime(slice); ok && !deleted {
			if c.triggers == nil {
				c.triggers = map[ServiceKey]time.Time{}
			}
			if old, seen := c.triggers[owner]; !seen || t.Before(old) {
				c.triggers[owner] = t
			}
		}
	}
	if hasOwner && !deleted {
		c.sliceOwner[key] = owner
	} else {
		delete(c.sliceOwner, key)
	}
	c.mu.Unlock()
	if hadPrev || hasOwner {
		metrics.EndpointChangesTotal.Inc()
		metrics.EndpointChangesPending.Inc()
		c.notify()
	}
}

func (c *Cache) onNode(obj any, deleted bool) {
	var node *v1.Node
	switch o := obj.(type) {
	case *v1.Node:
		node = o
	case cache.DeletedFinalStateUnknown:
		if o.Key != c.nodeName {
			return
		}
		deleted = true
	default:
		c.logger.Error(nil, "Ignoring unexpected object in Node event", "type", fmt.Sprintf("%T", obj))
		return
	}
	// The field selector should already restrict events to our node.
	if node != nil && node.Name != c.nodeName {
		return
	}
	n := Node{Name: c.nodeName}
	if !deleted {
		var notes []string
		n, notes = ConvertNode(node)
		c.logNotes(notes, "node", c.nodeName)
	}
	c.mu.Lock()
	changed := !c.node.Equal(n)
	c.node = n
	c.mu.Unlock()
	c.checkNode()
	// Node status updates are frequent and mostly irrelevant: only announce
	// changes of what we extract.
	if changed {
		c.notify()
	}
}

// Snapshot returns the current state, or nil before the cache has synced.
// Only the Services marked dirty since the previous call are rebuilt;
// unchanged ones keep their *Service from the previous snapshot, and
// Changed lists the keys whose value differs from it (every Service on the
// first call). The result must not be modified. Safe to call concurrently
// with event handling; concurrent Snapshot calls are serialised.
func (c *Cache) Snapshot() *Snapshot {
	if !c.isSynced.Load() {
		return nil
	}
	c.snapMu.Lock()
	defer c.snapMu.Unlock()

	c.mu.Lock()
	dirty := c.dirty
	c.dirty = make(map[ServiceKey]struct{}, len(dirty))
	// What was pending is taken into this snapshot (upstream resets the
	// gauges when a sync takes the changes).
	metrics.ServiceChangesPending.Set(0)
	metrics.EndpointChangesPending.Set(0)
	node := c.node
	triggers := c.triggers
	c.triggers = nil
	c.mu.Unlock()

	var changed, retry []ServiceKey
	for key := range dirty {
		cur, err := c.build(key)
		if err != nil {
			// Keep the previous value and try again next time.
			c.logger.Error(err, "Cannot rebuild Service", "service", key)
			retry = append(retry, key)
			continue
		}
		old := c.services[key]
		if old.Equal(cur) {
			continue
		}
		changed = append(changed, key)
		if cur == nil {
			delete(c.services, key)
		} else {
			c.services[key] = cur
		}
	}
	if len(retry) > 0 {
		c.markDirty(retry...)
	}
	slices.SortFunc(changed, ServiceKey.Compare)

	snap := &Snapshot{Node: node, Changed: changed}
	for _, k := range changed {
		if t, ok := triggers[k]; ok {
			if snap.TriggerTimes == nil {
				snap.TriggerTimes = map[ServiceKey]time.Time{}
			}
			snap.TriggerTimes[k] = t
		}
	}
	var prev []*Service
	if c.last != nil {
		prev = c.last.Services
	}
	if len(changed) == 0 && c.last != nil {
		snap.Services = prev // immutable, so safe to share
	} else {
		snap.Services = c.mergeSorted(prev, changed)
	}
	c.last = snap
	return snap
}

// mergeSorted rebuilds the sorted Service list from the previous one and
// the sorted changed keys in one linear pass.
func (c *Cache) mergeSorted(prev []*Service, changed []ServiceKey) []*Service {
	out := make([]*Service, 0, len(c.services))
	i, j := 0, 0
	for i < len(prev) || j < len(changed) {
		switch {
		case j == len(changed) || (i < len(prev) && prev[i].Key.Less(changed[j])):
			out = append(out, prev[i])
			i++
			continue
		case i < len(prev) && prev[i].Key == changed[j]:
			i++
		}
		if s := c.services[changed[j]]; s != nil {
			out = append(out, s)
		}
		j++
	}
	return out
}

// build computes the current value of one Service: nil when it does not
// exist or is not proxied.
func (c *Cache) build(key ServiceKey) (*Service, error) {
	obj, err := c.svcLister.Services(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get Service: %w", err)
	}
	svc, skip, notes := ConvertService(obj)
	c.logNotes(notes, "service", key)
	if svc == nil {
		c.logger.V(4).Info("Skipping Service", "service", key, "reason", skip)
		return nil, nil
	}
	objs, err := c.slices.ByIndex(sliceServiceIndex, key.String())
	if err != nil {
		return nil, fmt.Errorf("list EndpointSlices: %w", err)
	}
	eps := make([]*discovery.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*discovery.EndpointSlice); ok {
			eps = append(eps, s)
		}
	}
	svc, notes = MergeEndpointSlices(svc, eps)
	c.logNotes(notes, "service", key)
	return svc, nil
}

func (c *Cache) logNotes(notes []string, kind string, obj any) {
	if len(notes) == 0 {
		return
	}
	if v := c.logger.V(4); v.Enabled() {
		for _, n := range notes {
			v.Info("Ignoring part of object", kind, obj, "reason", n)
		}
	}
}

// sliceService returns the Service a slice belongs to.
func sliceService(s *discovery.EndpointSlice) (ServiceKey, bool) {
	if s == nil {
		return ServiceKey{}, false
	}
	name := s.Labels[discovery.LabelServiceName]
	if name == "" {
		return ServiceKey{}, false
	}
	return ServiceKey{Namespace: s.Namespace, Name: name}, true
}

func indexSliceByService(obj any) ([]string, error) {
	s, ok := obj.(*discovery.EndpointSlice)
	if !ok {
		return nil, fmt.Errorf("unexpected %T in EndpointSlice index", obj)
	}
	if key, ok := sliceService(s); ok {
		return []string{key.String()}, nil
	}
	return nil, nil
}

// sameVersion reports an update that carries no change (a resync).
func sameVersion(old, cur any) bool {
	o, err1 := meta.Accessor(old)
	n, err2 := meta.Accessor(cur)
	return err1 == nil && err2 == nil && o.GetResourceVersion() != "" &&
		o.GetResourceVersion() == n.GetResourceVersion()
}

// stripManagedFields is the informer transform: the proxy never reads
// managedFields, which are often the bulk of an object. Objects without
// metadata (e.g. tombstones) are passed through unchanged.
func stripManagedFields(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil && a.GetManagedFields() != nil {
		a.SetManagedFields(nil)
	}
	return obj, nil
}

// NodeObject returns this node's Node as last seen (nil if unknown), for
// the health server, which reports a node being deleted or drained.
// The object is shared with the informer: never modify it.
func (c *Cache) NodeObject() *v1.Node {
	if c.nodeLister == nil {
		return nil
	}
	n, err := c.nodeLister.Get(c.nodeName)
	if err != nil {
		return nil
	}
	return n
}

// triggerTime reads the EndpointSlice controller's
// endpoints.kubernetes.io/last-change-trigger-time annotation.
func triggerTime(slice *discovery.EndpointSlice) (time.Time, bool) {
	if slice == nil {
		return time.Time{}, false
	}
	v, ok := slice.Annotations[v1.EndpointsLastChangeTriggerTime]
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}
