package events

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	v1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Limits of the events.k8s.io/v1 validation.
const (
	maxNameLength     = 253 // DNS subdomain
	maxNoteLength     = 1024
	maxInstanceLength = 128
	maxReasonLength   = 128
	// hashLength is the hex digits of the name's hash: 64 bits, so
	// distinct series do not collide in practice.
	hashLength = 16
)

// probePatch changes nothing: patching with it returns the Event as
// stored, which the proxy may not get.
var probePatch = []byte("{}")

// attempt makes one attempt at writing it: create the series, or, if it
// exists, bump it.
func (r *APIRecorder) attempt(it *item) error {
	if !it.exists {
		err := r.call(func(ctx context.Context) error {
			_, err := r.client.Events(it.ev.Namespace).Create(ctx, it.ev, metav1.CreateOptions{})
			return err
		})
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
		// Written by an earlier run of the proxy on this node.
		it.exists = true
	}
	err := r.bumpSeries(it.ev)
	if apierrors.IsNotFound(err) {
		// Expired or deleted in between: create it afresh on the retry.
		it.exists = false
	}
	return err
}

// bumpSeries counts one more occurrence on the stored Event ev names, as
// client-go's event broadcaster does for a series: series.count plus one
// and series.lastObservedTime now. Without the get verb the stored count
// is read with a patch that changes nothing; the write is conditional on
// the resourceVersion read, so a concurrent bump is not lost (Conflict is
// retried).
func (r *APIRecorder) bumpSeries(ev *eventsv1.Event) error {
	var cur *eventsv1.Event
	err := r.call(func(ctx context.Context) error {
		var err error
		// kubectl patch event <name> --type=strategic -p '{}'
		cur, err = r.client.Events(ev.Namespace).Patch(ctx, ev.Name, types.StrategicMergePatchType, probePatch, metav1.PatchOptions{})
		return err
	})
	if err != nil {
		return err
	}
	patch, err := seriesPatch(cur, time.Now())
	if err != nil {
		return err
	}
	return r.call(func(ctx context.Context) error {
		// kubectl patch event <name> --type=strategic -p '{"metadata":{"resourceVersion":..},"series":{..}}'
		_, err := r.client.Events(ev.Namespace).Patch(ctx, ev.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
		return err
	})
}

// call runs one API call bounded by callTimeout.
func (r *APIRecorder) call(f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(r.apiCtx, r.opts.callTimeout)
	defer cancel()
	return f(ctx)
}

// seriesPatch is the strategic merge patch that counts one more
// occurrence at now on the stored Event cur. A stored Event without a
// series was one occurrence, so the series starts at two, as in client-go.
func seriesPatch(cur *eventsv1.Event, now time.Time) ([]byte, error) {
	if cur == nil {
		return nil, errors.New("no stored Event to update")
	}
	count := int32(2)
	if cur.Series != nil && cur.Series.Count >= 2 {
		count = cur.Series.Count + 1
	}
	type meta struct {
		// A resourceVersion in a patch makes it conditional.
		ResourceVersion string `json:"resourceVersion,omitempty"`
	}
	p := struct {
		Metadata *meta                `json:"metadata,omitempty"`
		Series   eventsv1.EventSeries `json:"series"`
	}{
		Series: eventsv1.EventSeries{Count: count, LastObservedTime: metav1.NewMicroTime(now)},
	}
	if rv := cur.ResourceVersion; rv != "" {
		p.Metadata = &meta{ResourceVersion: rv}
	}
	return json.Marshal(p)
}

// retriable tells failures worth another attempt (the server or the
// connection, a concurrent change) from requests the server will keep
// refusing (invalid, forbidden).
func retriable(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		// Transport errors and our own call timeout.
		return true
	}
	switch {
	case apierrors.IsConflict(err), apierrors.IsNotFound(err),
		apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsTooManyRequests(err), apierrors.IsInternalError(err),
		apierrors.IsServiceUnavailable(err), apierrors.IsUnexpectedServerError(err):
		return true
	}
	return false
}

// newEvent builds the first Event of a series.
func newEvent(svc servicecache.ServiceKey, uid types.UID, reason, message, node, instance string, now time.Time) *eventsv1.Event {
	return &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      EventName(svc, uid, reason, node),
			Namespace: svc.Namespace,
		},
		EventTime:           metav1.NewMicroTime(now),
		ReportingController: ReportingController,
		ReportingInstance:   instance,
		Action:              ActionProgramming,
		Reason:              truncate(reason, maxReasonLength),
		Regarding: v1.ObjectReference{
			Kind: "Service", APIVersion: "v1",
			Namespace: svc.Namespace, Name: svc.Name, UID: uid,
		},
		Note: truncate(message, maxNoteLength),
		Type: v1.EventTypeWarning,
	}
}

// EventName is the name of the series about reason on the Service, as
// reported by the proxy on node: the Service's name (so `kubectl get
// events` stays readable) and a hash of everything that identifies the
// series, so the same problem gets the same name after a restart and
// different nodes, Services (also a recreated one: a new UID) and reasons
// get different names.
func EventName(svc servicecache.ServiceKey, uid types.UID, reason, node string) string {
	h := sha256.New()
	for _, part := range []string{svc.Namespace, svc.Name, string(uid), reason, node, ReportingController} {
		h.Write([]byte(part))
		h.Write([]byte{0}) // no part contains NUL: the parts cannot run together
	}
	sum := hex.EncodeToString(h.Sum(nil))[:hashLength]
	prefix := svc.Name
	if limit := maxNameLength - 1 - hashLength; len(prefix) > limit {
		prefix = prefix[:limit]
	}
	// Each dot-separated label of a DNS subdomain ends alphanumerically.
	prefix = strings.TrimRight(prefix, "-.")
	if prefix == "" {
		return sum
	}
	return prefix + "." + sum
}

// reportingInstance names the proxy on node.
func reportingInstance(node string) string {
	return truncate(ReportingController+"-"+node, maxInstanceLength)
}

// truncate cuts s to at most limit bytes, at a character boundary, and
// marks the cut.
func truncate(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	const mark = "..."
	cut := limit - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
