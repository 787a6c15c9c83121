package kubelet

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Config is one node's kubelet.
type Config struct {
	NodeName   string // the Node object and spec.nodeName to serve
	PodCIDR    string // IPv4, or IPv4,IPv6 for dual-stack pods: 10.244.1.0/24,fd00:10:244:1::/64
	NodeNetns  string // the node's network namespace, e.g. node1
	EchoBinary string // run for containers without a command
	StateDir   string // see the package doc
	// TeardownOnExit tears every pod down when Run returns; otherwise pods
	// keep running and the next run cleans them up.
	TeardownOnExit bool
	// KillWait is the time between SIGTERM and SIGKILL (default 2s).
	KillWait time.Duration
	// Logger receives one line per pod lifecycle step (default: stderr).
	Logger *log.Logger
}

// Kubelet runs the pods bound to one node.
type Kubelet struct {
	cfg     Config
	client  kubernetes.Interface
	log     *log.Logger
	ip      ipCmd
	alloc   *Allocator // IPv4
	alloc6  *Allocator // IPv6; nil on an IPv4-only node
	records *recordStore

	hostMu  sync.Mutex
	hostIPs []string // the node's InternalIPs, one per family, IPv4 first

	mu      sync.Mutex
	ctx     context.Context
	workers map[types.UID]*podWorker
	wg      sync.WaitGroup
}

// New checks the configuration and the host (the ip command).
func New(client kubernetes.Interface, cfg Config) (*Kubelet, error) {
	if cfg.NodeName == "" || cfg.NodeNetns == "" || cfg.EchoBinary == "" || cfg.StateDir == "" {
		return nil, errors.New("node name, node netns, echo binary and state dir are required")
	}
	if cfg.KillWait <= 0 {
		cfg.KillWait = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	}
	alloc, alloc6, err := newAllocators(cfg.PodCIDR)
	if err != nil {
		return nil, err
	}
	ip, err := findIP()
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(cfg.EchoBinary); err != nil || st.IsDir() {
		return nil, fmt.Errorf("echo binary %q: not a file", cfg.EchoBinary)
	}
	records, err := newRecordStore(cfg.StateDir, cfg.NodeName)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return &Kubelet{
		cfg: cfg, client: client, log: cfg.Logger, ip: ip, alloc: alloc, alloc6: alloc6,
		records: records, workers: map[types.UID]*podWorker{},
	}, nil
}

// newAllocators parses --pod-cidr: an IPv4 CIDR, then optionally an IPv6
// one.
func newAllocators(cidrs string) (alloc, alloc6 *Allocator, err error) {
	parts := strings.Split(cidrs, ",")
	if len(parts) > 2 {
		return nil, nil, fmt.Errorf("pod CIDRs %q: want an IPv4 CIDR and optionally an IPv6 one", cidrs)
	}
	if alloc, err = NewAllocator(strings.TrimSpace(parts[0])); err != nil {
		return nil, nil, err
	}
	if !alloc.Prefix().Addr().Is4() {
		return nil, nil, fmt.Errorf("pod CIDRs %q: the first must be IPv4 (readiness probes and POD_IP use it)", cidrs)
	}
	if len(parts) == 2 {
		if alloc6, err = NewAllocator(strings.TrimSpace(parts[1])); err != nil {
			return nil, nil, err
		}
		if !alloc6.Prefix().Addr().Is6() {
			return nil, nil, fmt.Errorf("pod CIDRs %q: the second must be IPv6", cidrs)
		}
	}
	return alloc, alloc6, nil
}

// podCIDRs describes the allocators, for the log.
func (k *Kubelet) podCIDRs() string {
	s := k.alloc.Prefix().String()
	if k.alloc6 != nil {
		s += "," + k.alloc6.Prefix().String()
	}
	return s
}

// HostIP is the node's first InternalIP (IPv4 in the lab), "" until the
// Node object was read.
func (k *Kubelet) HostIP() string {
	if ips := k.HostIPs(); len(ips) > 0 {
		return ips[0]
	}
	return ""
}

// HostIPs are the node's InternalIPs, at most one per family, in the
// Node's order; nil until the Node object was read.
func (k *Kubelet) HostIPs() []string {
	k.hostMu.Lock()
	defer k.hostMu.Unlock()
	return k.hostIPs
}

// Run serves pods until ctx ends, then stops (tearing pods down only with
// TeardownOnExit) and returns.
func (k *Kubelet) Run(ctx context.Context) error {
	if !netnsExists(k.cfg.NodeNetns) {
		return fmt.Errorf("node network namespace %q does not exist (create it before starting the kubelet)", k.cfg.NodeNetns)
	}
	if err := enableForwarding(k.cfg.NodeNetns, k.alloc6 != nil); err != nil {
		return fmt.Errorf("enabling forwarding in %s: %w", k.cfg.NodeNetns, err)
	}
	k.mu.Lock()
	k.ctx = ctx
	k.mu.Unlock()

	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.cfg.NodeName).String()
		}))
	podInformer := factory.Core().V1().Pods().Informer()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	k.log.Printf("kubelet for node %s: pod CIDR %s, node netns %s, state %s; waiting for the pod list",
		k.cfg.NodeName, k.podCIDRs(), k.cfg.NodeNetns, k.cfg.StateDir)
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced) {
		return ctx.Err()
	}
	k.cleanupPrevious(podInformer.GetStore().List())

	go k.watchHostIP(ctx)
	reg, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.onPod(obj) },
		UpdateFunc: func(_, obj any) { k.onPod(obj) },
		DeleteFunc: func(obj any) { k.onDelete(obj) },
	})
	if err != nil {
		return err
	}
	k.log.Printf("kubelet for node %s: running", k.cfg.NodeName)
	<-ctx.Done()
	_ = podInformer.RemoveEventHandler(reg)
	k.log.Printf("kubelet for node %s: stopping (teardown of pods: %v)", k.cfg.NodeName, k.cfg.TeardownOnExit)
	k.wg.Wait()
	return nil
}

// cleanupPrevious removes what an earlier run of this kubelet left: every
// recorded pod namespace is torn down (its processes killed), and pods that
// still exist keep their IP when they are set up again.
func (k *Kubelet) cleanupPrevious(objs []any) {
	known := map[types.UID]*v1.Pod{}
	for _, o := range objs {
		if p, ok := o.(*v1.Pod); ok && p.Spec.NodeName == k.cfg.NodeName {
			known[p.UID] = p
		}
	}
	recs, errs := k.records.load()
	for _, err := range errs {
		k.log.Printf("state: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, r := range recs {
		netw := podNetwork{NodeNetns: k.cfg.NodeNetns, Netns: r.Netns, Veth: r.Veth}
		netw.IP, _ = netip.ParseAddr(r.IP)
		netw.IP6, _ = netip.ParseAddr(r.IP6)
		if err := k.ip.teardown(ctx, netw); err != nil {
			k.log.Printf("leftover %s of pod %s/%s: teardown failed: %v", r.Netns, r.Namespace, r.Name, err)
			continue
		}
		_ = k.records.remove(r.Netns)
		if p, ok := known[r.UID]; ok && netw.IP.IsValid() {
			if err := k.alloc.Reserve(string(p.UID), netw.IP); err == nil {
				if k.alloc6 != nil && netw.IP6.IsValid() {
					_ = k.alloc6.Reserve(string(p.UID), netw.IP6)
				}
				k.log.Printf("leftover %s of pod %s/%s removed; the pod will be set up again with %s", r.Netns, r.Namespace, r.Name, netw)
				continue
			}
		}
		if r.Namespace != "" && r.Name != "" && !knownName(known, r.Namespace, r.Name) {
			_ = os.RemoveAll(podControlDir(k.cfg.StateDir, r.Namespace, r.Name))
		}
		k.log.Printf("leftover %s of pod %s/%s (%s) removed", r.Netns, r.Namespace, r.Name, netw)
	}
	// Pods whose records are lost keep the IPs they have in the API
	// (Reserve keeps an IP reserved above).
	for uid, p := range known {
		ips := []string{p.Status.PodIP}
		for _, pip := range p.Status.PodIPs {
			ips = append(ips, pip.IP)
		}
		for _, s := range ips {
			ip, err := netip.ParseAddr(s)
			switch {
			case err != nil:
			case k.alloc.Prefix().Contains(ip):
				_ = k.alloc.Reserve(string(uid), ip)
			case k.alloc6 != nil && k.alloc6.Prefix().Contains(ip):
				_ = k.alloc6.Reserve(string(uid), ip)
			}
		}
	}
}

// knownName says whether a current pod has this name (a same-named
// successor whose control directory must be kept).
func knownName(known map[types.UID]*v1.Pod, namespace, name string) bool {
	for _, p := range known {
		if p.Namespace == namespace && p.Name == name {
			return true
		}
	}
	return false
}

// watchHostIP reads the node's InternalIPs for status.hostIP(s), retrying
// until the Node exists.
func (k *Kubelet) watchHostIP(ctx context.Context) {
	warned := false
	for {
		node, err := k.client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
		if err == nil {
			if ips := internalIPs(node); len(ips) > 0 {
				k.hostMu.Lock()
				k.hostIPs = ips
				k.hostMu.Unlock()
				k.log.Printf("node %s InternalIPs %s", k.cfg.NodeName, strings.Join(ips, ","))
				return
			}
			err = errors.New("node has no InternalIP")
		}
		if !warned && ctx.Err() == nil {
			k.log.Printf("node %s: %v (retrying; pods have no hostIP meanwhile)", k.cfg.NodeName, err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// internalIPs are a Node's InternalIPs, the first of each family, in the
// Node's order (the kubelet's status.hostIPs).
func internalIPs(node *v1.Node) []string {
	var out []string
	seen := map[bool]bool{} // is IPv4 -> seen
	for _, a := range node.Status.Addresses {
		ip, err := netip.ParseAddr(a.Address)
		if a.Type != v1.NodeInternalIP || err != nil || seen[ip.Is4()] {
			continue
		}
		seen[ip.Is4()] = true
		out = append(out, ip.String())
	}
	return out
}

func (k *Kubelet) onPod(obj any) {
	pod, ok := obj.(*v1.Pod)
	// The API filters by node already; fakes and old objects may not.
	if !ok || pod.Spec.NodeName != k.cfg.NodeName {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	w := k.workers[pod.UID]
	if w == nil {
		if k.ctx.Err() != nil || pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
			return
		}
		if len(pod.Spec.Containers) == 0 {
			k.log.Printf("pod %s/%s has no containers; ignoring it", pod.Namespace, pod.Name)
			return
		}
		if pod.Spec.HostNetwork {
			k.log.Printf("pod %s/%s asks for hostNetwork, which the lab kubelet does not do; giving it a pod network", pod.Namespace, pod.Name)
		}
		w = newPodWorker(k, pod)
		k.workers[pod.UID] = w
		// The worker must see the pod before it starts: its first look
		// decides whether there is a pod to run at all.
		w.update(pod)
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			w.run(k.ctx)
		}()
	}
	w.update(pod)
}

// nameTaken says whether another pod of this name has a worker.
func (k *Kubelet) nameTaken(namespace, name string, except types.UID) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for uid, w := range k.workers {
		if uid != except && w.ns == namespace && w.nm == name {
			return true
		}
	}
	return false
}

func (k *Kubelet) onDelete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	k.mu.Lock()
	w := k.workers[pod.UID]
	delete(k.workers, pod.UID)
	k.mu.Unlock()
	if w != nil {
		w.deleted()
	}
}
