package proxy

import (
	"fmt"
	"maps"
	"slices"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/events"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/iptables"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// problem is a planner's or the guard's problem with a Service (ipvs.Problem
// and guard.Problem convert to it).
type problem struct {
	Service servicecache.ServiceKey
	Reason  string
	Message string
}

// ReasonIPSetFull is the Event reason of a set entry a full ipset
// (maxelem) refused.
const ReasonIPSetFull = "IPSetFull"

// iptProblems turns the iptables planner's ServiceProblems and the set
// entries a full ipset refused into problems.
func iptProblems(probs []iptables.ServiceProblem, refused []iptables.RefusedEntry) []problem {
	out := make([]problem, 0, len(probs)+len(refused))
	for _, pr := range probs {
		out = append(out, problem(pr))
	}
	for _, r := range refused {
		for _, k := range r.Services {
			out = append(out, problem{Service: k, Reason: ReasonIPSetFull,
				Message: fmt.Sprintf("ipset %s is full (maxelem): entry %s not added; retried at every sync", r.Set, r.Entry)})
		}
	}
	return out
}

func planProblems(probs []ipvs.Problem) []problem {
	out := make([]problem, len(probs))
	for i, pr := range probs {
		out[i] = problem(pr)
	}
	return out
}

// problemLog logs problems with Services and records them as Warning
// Events, each once: again only after it went away and came back.
type problemLog struct {
	logMessage string
	// errorLevel logs at error level (a failure, not a workaround).
	errorLevel bool
	// reported holds, per Service, the problems already reported.
	reported map[servicecache.ServiceKey][]problem
}

// report reports the new ones of probs, the problems of the Services in
// keys (of every Service when keys is nil, a full plan), and returns the
// Services whose problems differ from those reported before, sorted.
func (l *problemLog) report(rec events.Recorder, snap *servicecache.Snapshot, keys []servicecache.ServiceKey, probs []problem) []servicecache.ServiceKey {
	now := map[servicecache.ServiceKey][]problem{}
	for _, pr := range probs {
		now[pr.Service] = append(now[pr.Service], pr)
	}
	var changed []servicecache.ServiceKey
	gone := func(k servicecache.ServiceKey) {
		if _, ok := now[k]; !ok {
			if _, was := l.reported[k]; was {
				changed = append(changed, k)
				delete(l.reported, k)
			}
		}
	}
	if keys == nil {
		for k := range l.reported {
			gone(k)
		}
	} else {
		for _, k := range keys {
			gone(k)
		}
	}
	if l.reported == nil {
		l.reported = map[servicecache.ServiceKey][]problem{}
	}
	// In key order: Events and log lines come out the same way each time.
	for _, k := range slices.SortedFunc(maps.Keys(now), servicecache.ServiceKey.Compare) {
		list := now[k]
		old := l.reported[k]
		if !slices.Equal(old, list) {
			changed = append(changed, k)
		}
		for _, pr := range list {
			if slices.Contains(old, pr) {
				continue
			}
			if l.errorLevel {
				klog.ErrorS(nil, l.logMessage, "service", pr.Service, "reason", pr.Reason, "problem", pr.Message)
			} else {
				klog.InfoS(l.logMessage, "service", pr.Service, "reason", pr.Reason, "problem", pr.Message)
			}
			if rec != nil {
				var uid types.UID
				if svc := snap.Service(k); svc != nil {
					uid = svc.UID
				}
				rec.ServiceWarning(k, uid, pr.Reason, pr.Message)
			}
		}
		l.reported[k] = list
	}
	slices.SortFunc(changed, servicecache.ServiceKey.Compare)
	return changed
}
