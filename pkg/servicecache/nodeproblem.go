package servicecache

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
)

// Reasons of NodeProblems, also the values of the node_problem gauge's
// reason label.
const (
	// ReasonNodeNotFound: there is no Node object by the proxy's node
	// name, so NodePorts have no node address to be served on.
	ReasonNodeNotFound = "NodeNotFound"
	// ReasonNodeWithoutAddresses: the Node has no usable InternalIP or
	// ExternalIP address, so NodePorts are served on none.
	ReasonNodeWithoutAddresses = "NodeWithoutAddresses"
)

// nodeProblemReasons lists every reason, so the gauge reads 0 for those
// that do not hold.
var nodeProblemReasons = []string{ReasonNodeNotFound, ReasonNodeWithoutAddresses}

// nodeProblemRelog is how often a problem that persists is logged again,
// so that it shows in recent logs.
const nodeProblemRelog = 5 * time.Minute

// nodeProblemCheck is how often the Node is checked without an event: a
// missing Node has none.
const nodeProblemCheck = time.Minute

// NodeProblem is something wrong with the proxy's own Node object that
// keeps it from serving NodePorts.
type NodeProblem struct {
	Reason  string
	Message string
}

// NodeProblems returns what is wrong with node, the Node object the proxy
// found by name (nil: none), sorted by reason.
func NodeProblems(name string, node *v1.Node) []NodeProblem {
	if node == nil {
		return []NodeProblem{{
			Reason: ReasonNodeNotFound,
			Message: fmt.Sprintf("no Node object is named %q: NodePorts are not served; "+
				"check --hostname-override, $NODE_NAME (usually spec.nodeName through the downward API) "+
				"and that the node is registered (kubectl get node %s)", name, name),
		}}
	}
	n, notes := ConvertNode(node)
	if len(n.Addresses) == 0 {
		var seen []string
		for _, a := range node.Status.Addresses {
			seen = append(seen, fmt.Sprintf("%s %s", a.Type, a.Address))
		}
		msg := fmt.Sprintf("Node %q has no usable InternalIP or ExternalIP address: NodePorts are not served", name)
		if len(seen) > 0 {
			msg += "; status.addresses: " + strings.Join(seen, ", ")
		} else {
			msg += "; status.addresses is empty (has the kubelet or cloud provider set them yet?)"
		}
		if len(notes) > 0 {
			msg += "; " + strings.Join(notes, "; ")
		}
		return []NodeProblem{{Reason: ReasonNodeWithoutAddresses, Message: msg}}
	}
	return nil
}

// NodeProblems returns the current problems with the proxy's Node (none
// before the cache has synced), sorted by reason.
func (c *Cache) NodeProblems() []NodeProblem {
	c.probMu.Lock()
	defer c.probMu.Unlock()
	return c.nodeProbs.current()
}

// nodeProblemState remembers the problems reported and when each was last
// logged, so that each is logged when it appears, when it clears and then
// only every relog interval while it lasts.
type nodeProblemState struct {
	probs map[string]NodeProblem // by reason
	last  map[string]time.Time   // when each was last logged
}

// nodeProblemReport is what changed: what to log.
type nodeProblemReport struct {
	appeared []NodeProblem // new, or whose message changed
	relogged []NodeProblem // still there, not logged for a while
	cleared  []NodeProblem
}

// update records probs as the problems at now and returns what to log.
func (s *nodeProblemState) update(probs []NodeProblem, now time.Time, relog time.Duration) nodeProblemReport {
	if s.probs == nil {
		s.probs = map[string]NodeProblem{}
		s.last = map[string]time.Time{}
	}
	var rep nodeProblemReport
	cur := map[string]NodeProblem{}
	for _, p := range probs {
		cur[p.Reason] = p
		old, had := s.probs[p.Reason]
		switch {
		case !had || old.Message != p.Message:
			rep.appeared = append(rep.appeared, p)
			s.last[p.Reason] = now
		case now.Sub(s.last[p.Reason]) >= relog:
			rep.relogged = append(rep.relogged, p)
			s.last[p.Reason] = now
		}
	}
	for _, r := range slices.Sorted(maps.Keys(s.probs)) {
		if _, still := cur[r]; !still {
			rep.cleared = append(rep.cleared, s.probs[r])
			delete(s.last, r)
		}
	}
	s.probs = cur
	return rep
}

func (s *nodeProblemState) current() []NodeProblem {
	var out []NodeProblem
	for _, r := range slices.Sorted(maps.Keys(s.probs)) {
		out = append(out, s.probs[r])
	}
	return out
}

// checkNodeUntil checks the Node now and then every nodeProblemCheck
// until ctx ends: a missing Node sends no events, and a lasting problem is
// to be logged again now and then.
func (c *Cache) checkNodeUntil(ctx context.Context) {
	c.checkNode()
	t := time.NewTicker(nodeProblemCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.checkNode()
		}
	}
}

// checkNode evaluates the node's problems from the lister, which is at
// least as new as any Node event: whichever caller runs last sees the
// latest object. It sets the gauge and logs what changed. No-op before the
// cache has synced, as the Node may not have been listed yet.
func (c *Cache) checkNode() {
	if !c.isSynced.Load() {
		return
	}
	c.probMu.Lock()
	defer c.probMu.Unlock()
	node, err := c.nodeLister.Get(c.nodeName)
	if err != nil {
		if !apierrors.IsNotFound(err) {
			c.logger.Error(err, "Cannot read the Node from the cache", "node", c.nodeName)
			return
		}
		node = nil
	}
	probs := NodeProblems(c.nodeName, node)
	rep := c.nodeProbs.update(probs, c.now(), nodeProblemRelog)

	held := map[string]bool{}
	for _, p := range probs {
		held[p.Reason] = true
	}
	for _, r := range nodeProblemReasons {
		v := 0.0
		if held[r] {
			v = 1
		}
		metrics.NodeProblem.WithLabelValues(r).Set(v)
	}
	for _, p := range rep.appeared {
		c.logger.Error(nil, "Problem with this node's Node object", "node", c.nodeName, "reason", p.Reason, "problem", p.Message)
	}
	for _, p := range rep.relogged {
		c.logger.Error(nil, "Problem with this node's Node object persists", "node", c.nodeName, "reason", p.Reason, "problem", p.Message)
	}
	for _, p := range rep.cleared {
		c.logger.Info("Problem with this node's Node object is gone", "node", c.nodeName, "reason", p.Reason)
	}
}
