package ipvs

import (
	"slices"
	"strings"
	"sync"

	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Schedulers knows which IPVS schedulers this node's kernel can load.
// Each name is probed once, when a Service first asks for it (the kernel
// loads the module ip_vs_NAME on the first virtual server that uses it),
// so that the planner can refuse an unavailable one up front: the Service
// gets the default scheduler and a Warning Event instead of a virtual
// server the kernel refuses at every sync.
type Schedulers struct {
	probe func(name string) error

	mu    sync.Mutex
	known map[string]error // nil: the kernel loads it
}

// NewSchedulers returns a registry that probes with probe
// (KernelIPVS.ProbeScheduler).
func NewSchedulers(probe func(name string) error) *Schedulers {
	return &Schedulers{probe: probe, known: map[string]error{}}
}

// Ensure probes the names not probed yet (names that are no IPVS
// scheduler are left to the planner, which reports them).
func (s *Schedulers) Ensure(names ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, name := range names {
		if _, done := s.known[name]; done || !ValidScheduler(name) {
			continue
		}
		err := s.probe(name)
		s.known[name] = err
		if err != nil {
			klog.InfoS("IPVS scheduler unavailable in this kernel; Services asking for it get the default scheduler", "scheduler", name, "err", err)
		} else {
			klog.V(2).InfoS("IPVS scheduler available", "scheduler", name)
		}
	}
}

// Available reports whether the kernel loads name. A name not probed yet
// counts as available: the kernel's answer to the virtual server is then
// the judge (see ServiceFailure).
func (s *Schedulers) Available(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.known[name] == nil
}

// Unavailable returns why the kernel cannot load name (nil: it can, or it
// was not probed).
func (s *Schedulers) Unavailable(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.known[name]
}

// AnnotatedSchedulers returns the schedulers the Services named by keys
// (every Service of snap when keys is nil) ask for in their annotations,
// sorted and without duplicates.
func AnnotatedSchedulers(snap *servicecache.Snapshot, keys []servicecache.ServiceKey) []string {
	var out []string
	add := func(svc *servicecache.Service) {
		if svc == nil || len(svc.Annotations) == 0 {
			return
		}
		if v, ok := svc.Annotations[AnnotationScheduler]; ok {
			if name := strings.TrimSpace(v); name != "" && !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
	}
	if keys == nil {
		for _, svc := range snap.Services {
			add(svc)
		}
	} else {
		for _, k := range keys {
			add(snap.Service(k))
		}
	}
	slices.Sort(out)
	return out
}
