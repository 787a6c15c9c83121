package events

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

func TestEventName(t *testing.T) {
	base := func() (servicecache.ServiceKey, types.UID, string, string) {
		return servicecache.ServiceKey{Namespace: "default", Name: "web"}, "uid-1", "InvalidScheduler", "n1"
	}
	svc, uid, reason, node := base()
	ref := EventName(svc, uid, reason, node)
	if again := EventName(base()); again != ref {
		t.Fatalf("not deterministic: %q then %q", ref, again)
	}
	if !strings.HasPrefix(ref, "web.") || len(ref) != len("web.")+hashLength {
		t.Errorf("name %q, want web.<%d hex>", ref, hashLength)
	}
	long := strings.Repeat("a", 300)
	for _, tc := range []struct {
		name string
		mod  func(*servicecache.ServiceKey, *types.UID, *string, *string)
	}{
		{"namespace", func(s *servicecache.ServiceKey, _ *types.UID, _, _ *string) { s.Namespace = "other" }},
		{"service", func(s *servicecache.ServiceKey, _ *types.UID, _, _ *string) { s.Name = "api" }},
		{"uid", func(_ *servicecache.ServiceKey, u *types.UID, _, _ *string) { *u = "uid-2" }},
		{"reason", func(_ *servicecache.ServiceKey, _ *types.UID, r, _ *string) { *r = "Other" }},
		{"node", func(_ *servicecache.ServiceKey, _ *types.UID, _, n *string) { *n = "n2" }},
		// Moving a character from one part to the next is another series.
		{"boundary", func(s *servicecache.ServiceKey, _ *types.UID, _, _ *string) { s.Namespace, s.Name = "defaultw", "eb" }},
		{"long name", func(s *servicecache.ServiceKey, _ *types.UID, _, _ *string) { s.Name = long }},
		{"name ending in a dash when cut", func(s *servicecache.ServiceKey, _ *types.UID, _, _ *string) {
			s.Name = strings.Repeat("a", maxNameLength-hashLength-2) + "-b"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, u, r, n := base()
			tc.mod(&s, &u, &r, &n)
			got := EventName(s, u, r, n)
			if got == ref {
				t.Errorf("same name %q as the reference series", got)
			}
			if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
				t.Errorf("name %q (%d chars) invalid: %v", got, len(got), errs)
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in    string
		limit int
		want  string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"a bit too long", 10, "a bit t..."},
		// "é" is two bytes: never cut inside it.
		{"ééééé", 8, "éé..."},
		{strings.Repeat("x", 2000), maxNoteLength, strings.Repeat("x", maxNoteLength-3) + "..."},
	} {
		got := truncate(tc.in, tc.limit)
		if got != tc.want || len(got) > tc.limit || !utf8.ValidString(got) {
			t.Errorf("truncate(%.20q, %d) = %.30q (%d bytes), want %.30q", tc.in, tc.limit, got, len(got), tc.want)
		}
	}
}

func TestSeriesPatch(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	for _, tc := range []struct {
		name string
		cur  *eventsv1.Event
		want string
	}{
		{"single Event", &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "7"}},
			`{"metadata":{"resourceVersion":"7"},"series":{"count":2,"lastObservedTime":"2026-01-02T03:04:05.000006Z"}}`},
		{"series", &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "8"}, Series: &eventsv1.EventSeries{Count: 5}},
			`{"metadata":{"resourceVersion":"8"},"series":{"count":6,"lastObservedTime":"2026-01-02T03:04:05.000006Z"}}`},
		{"no resourceVersion", &eventsv1.Event{Series: &eventsv1.EventSeries{Count: 0}},
			`{"series":{"count":2,"lastObservedTime":"2026-01-02T03:04:05.000006Z"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := seriesPatch(tc.cur, now)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("patch\n%s\nwant\n%s", got, tc.want)
			}
			if !json.Valid(got) {
				t.Error("invalid JSON")
			}
		})
	}
	if _, err := seriesPatch(nil, now); err == nil {
		t.Error("nil Event accepted")
	}
}

func TestRetriable(t *testing.T) {
	gr := schema.GroupResource{Resource: "events"}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("dial tcp: connection refused"), true},
		{apierrors.NewServiceUnavailable("x"), true},
		{apierrors.NewInternalError(fmt.Errorf("x")), true},
		{apierrors.NewTooManyRequests("x", 1), true},
		{apierrors.NewServerTimeout(gr, "create", 1), true},
		{apierrors.NewTimeoutError("x", 1), true},
		{apierrors.NewConflict(gr, "x", fmt.Errorf("x")), true},
		{apierrors.NewNotFound(gr, "x"), true},
		{apierrors.NewForbidden(gr, "x", fmt.Errorf("x")), false},
		{apierrors.NewBadRequest("x"), false},
		{apierrors.NewInvalid(schema.GroupKind{Kind: "Event"}, "x", nil), false},
	} {
		if got := retriable(tc.err); got != tc.want {
			t.Errorf("retriable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestReportingInstance(t *testing.T) {
	if got := reportingInstance("n1"); got != "kube-ipvs-proxy-n1" {
		t.Errorf("got %q", got)
	}
	if got := reportingInstance(strings.Repeat("n", 253)); len(got) > maxInstanceLength {
		t.Errorf("%d chars, limit %d", len(got), maxInstanceLength)
	}
}
