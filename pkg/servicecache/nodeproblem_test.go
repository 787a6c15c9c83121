package servicecache

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-base/metrics/legacyregistry"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
)

func withAddresses(n *v1.Node, addrs ...v1.NodeAddress) *v1.Node {
	n.Status.Addresses = addrs
	return n
}

func TestNodeProblems(t *testing.T) {
	internal := func(a string) v1.NodeAddress { return v1.NodeAddress{Type: v1.NodeInternalIP, Address: a} }
	for _, tc := range []struct {
		name   string
		node   *v1.Node
		reason string // "" for no problem
		says   []string
	}{
		{"no Node", nil, ReasonNodeNotFound,
			[]string{`"n1"`, "--hostname-override", "$NODE_NAME", "spec.nodeName"}},
		{"InternalIP and ExternalIP", nodeObj("n1"), "", nil},
		{"ExternalIP only", withAddresses(nodeObj("n1"), v1.NodeAddress{Type: v1.NodeExternalIP, Address: "1.2.3.4"}), "", nil},
		{"IPv6 InternalIP", withAddresses(nodeObj("n1"), internal("fd00::10")), "", nil},
		{"no addresses", withAddresses(nodeObj("n1")), ReasonNodeWithoutAddresses,
			[]string{`"n1"`, "status.addresses is empty"}},
		{"hostname only", withAddresses(nodeObj("n1"), v1.NodeAddress{Type: v1.NodeHostName, Address: "n1.example"}), ReasonNodeWithoutAddresses,
			[]string{"Hostname n1.example"}},
		{"unparsable InternalIP", withAddresses(nodeObj("n1"), internal("not-an-ip")), ReasonNodeWithoutAddresses,
			[]string{"InternalIP not-an-ip", `invalid IP "not-an-ip"`}},
		{"unspecified InternalIP", withAddresses(nodeObj("n1"), internal("0.0.0.0")), ReasonNodeWithoutAddresses,
			[]string{"unspecified"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NodeProblems("n1", tc.node)
			if tc.reason == "" {
				if len(got) != 0 {
					t.Fatalf("problems %+v, want none", got)
				}
				return
			}
			if len(got) != 1 || got[0].Reason != tc.reason {
				t.Fatalf("problems %+v, want one %s", got, tc.reason)
			}
			for _, s := range tc.says {
				if !strings.Contains(got[0].Message, s) {
					t.Errorf("message %q does not say %q", got[0].Message, s)
				}
			}
		})
	}
}

// A problem is logged when it appears or changes, again only after the
// relog interval while it lasts, and once when it clears.
func TestNodeProblemState(t *testing.T) {
	nf := NodeProblem{Reason: ReasonNodeNotFound, Message: "no n1"}
	wa := NodeProblem{Reason: ReasonNodeWithoutAddresses, Message: "no addresses"}
	wa2 := NodeProblem{Reason: ReasonNodeWithoutAddresses, Message: "only a hostname"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const relog = 5 * time.Minute
	var s nodeProblemState
	for _, st := range []struct {
		name                       string
		at                         time.Duration
		probs                      []NodeProblem
		appeared, relogged, clears []NodeProblem
	}{
		{"appears", 0, []NodeProblem{nf}, []NodeProblem{nf}, nil, nil},
		{"persists", time.Minute, []NodeProblem{nf}, nil, nil, nil},
		{"persists, just short of relog", relog - time.Second, []NodeProblem{nf}, nil, nil, nil},
		{"relogged", relog, []NodeProblem{nf}, nil, []NodeProblem{nf}, nil},
		{"not again soon", relog + time.Minute, []NodeProblem{nf}, nil, nil, nil},
		{"another one", relog + 2*time.Minute, []NodeProblem{wa}, []NodeProblem{wa}, nil, []NodeProblem{nf}},
		{"message changes", relog + 3*time.Minute, []NodeProblem{wa2}, []NodeProblem{wa2}, nil, nil},
		{"gone", relog + 4*time.Minute, nil, nil, nil, []NodeProblem{wa2}},
		{"still gone", 3 * relog, nil, nil, nil, nil},
		{"back", 3*relog + time.Second, []NodeProblem{nf}, []NodeProblem{nf}, nil, nil},
	} {
		rep := s.update(st.probs, t0.Add(st.at), relog)
		if !slices.Equal(rep.appeared, st.appeared) || !slices.Equal(rep.relogged, st.relogged) || !slices.Equal(rep.cleared, st.clears) {
			t.Fatalf("%s: report %+v, want appeared %v relogged %v cleared %v", st.name, rep, st.appeared, st.relogged, st.clears)
		}
		if got := s.current(); !slices.Equal(got, st.probs) {
			t.Fatalf("%s: current %v, want %v", st.name, got, st.probs)
		}
	}
}

// nodeProblemGauge reads kubeipvsproxy_node_problem{reason}; -1 if absent.
func nodeProblemGauge(t *testing.T, reason string) float64 {
	t.Helper()
	mfs, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "kubeipvsproxy_node_problem" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" && lp.GetValue() == reason {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

func reasons(ps []NodeProblem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Reason)
	}
	return out
}

// The gauge and NodeProblems follow the Node: missing at sync, created,
// losing its addresses, deleted.
func TestCacheNodeProblems(t *testing.T) {
	metrics.Register()
	h := newHarness(t) // no Node n1
	ctx := context.Background()
	expect := func(what string, nf, wa float64, want ...string) {
		t.Helper()
		eventually(t, what, func() bool {
			return nodeProblemGauge(t, ReasonNodeNotFound) == nf &&
				nodeProblemGauge(t, ReasonNodeWithoutAddresses) == wa &&
				slices.Equal(reasons(h.c.NodeProblems()), want)
		})
	}
	expect("NodeNotFound after sync", 1, 0, ReasonNodeNotFound)

	if _, err := h.client.CoreV1().Nodes().Create(ctx, nodeObj("n1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("no problem once the Node exists", 0, 0)

	if _, err := h.client.CoreV1().Nodes().Update(ctx, withAddresses(nodeObj("n1")), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("NodeWithoutAddresses", 0, 1, ReasonNodeWithoutAddresses)

	if err := h.client.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("NodeNotFound after deletion", 1, 0, ReasonNodeNotFound)
}

// A Node that is there at sync is no problem, and another node's Node is
// not ours.
func TestCacheNodePresentAtSync(t *testing.T) {
	metrics.Register()
	h := newHarness(t, nodeObj("n1"), withAddresses(nodeObj("n2")))
	eventually(t, "gauges at 0", func() bool {
		return nodeProblemGauge(t, ReasonNodeNotFound) == 0 && nodeProblemGauge(t, ReasonNodeWithoutAddresses) == 0
	})
	if got := h.c.NodeProblems(); len(got) != 0 {
		t.Fatalf("problems %+v, want none", got)
	}
}
