// Package events records Kubernetes Events about Services the proxy could
// not program as asked (e.g. an unknown scheduler in an annotation), so
// that `kubectl describe service` shows the problem to the Service's owner,
// not only the proxy's log.
package events

import (
	"context"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// ReportingController is the controller name Events carry.
const ReportingController = "kube-ipvs-proxy"

// ActionProgramming is the Events' action: what the proxy was doing.
const ActionProgramming = "Programming"

// Recorder records Warning Events on Services.
type Recorder interface {
	ServiceWarning(svc servicecache.ServiceKey, uid types.UID, reason, message string)
}

// APIRecorder writes events.k8s.io/v1 Events through the API server, as
// kube-proxy does. The broadcaster batches and rate-limits them, and
// repeated identical Events become a series rather than new objects.
type APIRecorder struct {
	broadcaster events.EventBroadcaster
	recorder    events.EventRecorder
}

// NewAPIRecorder starts a broadcaster writing to client until ctx ends.
func NewAPIRecorder(ctx context.Context, client kubernetes.Interface) *APIRecorder {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	b.StartRecordingToSink(ctx.Done())
	return &APIRecorder{broadcaster: b, recorder: b.NewRecorder(scheme.Scheme, ReportingController)}
}

// ServiceWarning records a Warning Event about a Service.
func (r *APIRecorder) ServiceWarning(svc servicecache.ServiceKey, uid types.UID, reason, message string) {
	ref := &v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: svc.Namespace, Name: svc.Name, UID: uid}
	r.recorder.Eventf(ref, nil, v1.EventTypeWarning, reason, ActionProgramming, "%s", message)
}

// Shutdown stops the broadcaster, flushing what it can.
func (r *APIRecorder) Shutdown() { r.broadcaster.Shutdown() }
