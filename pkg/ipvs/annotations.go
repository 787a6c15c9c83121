package ipvs

import (
	"slices"
	"strconv"
	"strings"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Per-Service annotations the planner reads.
const (
	// AnnotationScheduler picks the IPVS scheduler of a Service's virtual
	// servers instead of --ipvs-scheduler (see ValidScheduler). An empty
	// value means the global scheduler; an unknown one is reported as a
	// Problem and the global scheduler is used.
	AnnotationScheduler = "ipvs.kube-ipvs-proxy.io/scheduler"
	// AnnotationSchedFlags sets the scheduler flags (ipvsadm -b) as a
	// comma-separated list: mh-fallback and mh-port for the mh scheduler,
	// sh-fallback and sh-port for sh. The list replaces the default (mh-port
	// for mh, as upstream; none for sh); an empty value means no flag. A
	// flag the Service's scheduler does not have is reported as a Problem
	// and the whole annotation is ignored.
	AnnotationSchedFlags = "ipvs.kube-ipvs-proxy.io/mh-flags"
)

// schedulers are the IPVS schedulers a Service may ask for, as
// --ipvs-scheduler accepts them.
var schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos"}

// ValidScheduler reports whether name is an IPVS scheduler the proxy
// accepts: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh, fo, ovf, twos.
func ValidScheduler(name string) bool { return slices.Contains(schedulers, name) }

// Problem is something wrong with a Service that the planner worked
// around, e.g. an annotation with an unknown value. The caller logs it and
// may record it as an Event on the Service.
type Problem struct {
	Service servicecache.ServiceKey
	// Reason is a short CamelCase word, the Event's reason.
	Reason  string
	Message string
}

// Problem reasons.
const (
	ReasonInvalidScheduler      = "InvalidSchedulerAnnotation"
	ReasonInvalidSchedulerFlags = "InvalidSchedulerFlagsAnnotation"
)

func (p Problem) String() string { return p.Service.String() + ": " + p.Message }

// defaultSchedFlags are the flags a scheduler gets without the annotation:
// upstream sets mh-port for mh, so that connections from one client spread
// over the backends (pkg/proxy/ipvs/proxier.go, "Set the source hash flag
// needed for the distribution method mh").
func defaultSchedFlags(sched string) Flags {
	if sched == "mh" {
		return FlagSched2
	}
	return 0
}

// schedOptions returns the scheduler and scheduler flags of svc's virtual
// servers, appending to problems what is wrong with its annotations.
func (p *planner) schedOptions(svc *servicecache.Service, problems []Problem) (string, Flags, []Problem) {
	if len(svc.Annotations) == 0 {
		return p.scheduler, p.flags, problems
	}
	sched := p.scheduler
	if v, ok := svc.Annotations[AnnotationScheduler]; ok {
		switch name := strings.TrimSpace(v); {
		case name == "":
			// Set but empty: the global scheduler, as when unset.
		case ValidScheduler(name) && p.schedAvailable != nil && name != p.scheduler && !p.schedAvailable(name):
			problems = append(problems, Problem{Service: svc.Key, Reason: ReasonSchedulerUnavailable, Message: "annotation " + AnnotationScheduler +
				": this node's kernel cannot load scheduler " + strconv.Quote(name) + " (no module ip_vs_" + name + "), using " + strconv.Quote(p.scheduler)})
		case ValidScheduler(name):
			sched = name
		default:
			problems = append(problems, Problem{Service: svc.Key, Reason: ReasonInvalidScheduler, Message: "annotation " + AnnotationScheduler +
				": unknown scheduler " + strconv.Quote(v) + ", using " + strconv.Quote(p.scheduler) +
				" (valid: " + strings.Join(schedulers, ", ") + ")"})
		}
	}
	flags := defaultSchedFlags(sched)
	if v, ok := svc.Annotations[AnnotationSchedFlags]; ok {
		f, msg := parseSchedFlags(sched, v)
		if msg == "" {
			flags = f
		} else {
			problems = append(problems, Problem{Service: svc.Key, Reason: ReasonInvalidSchedulerFlags, Message: "annotation " + AnnotationSchedFlags +
				": " + msg + ", annotation ignored"})
		}
	}
	return sched, flags, problems
}

// parseSchedFlags parses the flag list for sched; msg is non-empty when the
// list is not valid for it.
func parseSchedFlags(sched, v string) (f Flags, msg string) {
	var prefix string
	switch sched {
	case "mh", "sh":
		prefix = sched + "-"
	}
	for tok := range strings.SplitSeq(v, ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" {
			continue
		}
		if prefix == "" {
			return 0, "scheduler " + strconv.Quote(sched) + " has no flags (only mh and sh do), got " + strconv.Quote(v)
		}
		switch tok {
		case prefix + "fallback":
			f |= FlagSched1
			continue
		case prefix + "port":
			f |= FlagSched2
			continue
		}
		return 0, "unknown flag " + strconv.Quote(tok) + " for scheduler " + strconv.Quote(sched) +
			" (valid: " + prefix + "fallback, " + prefix + "port)"
	}
	return f, ""
}
