package ipvs

import (
	"errors"
	"fmt"
	"slices"

	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// execute runs ops in order, collects their errors and records what
// succeeded, which it also returns (ok[i] for ops[i]). want holds the
// wanted virtual servers the ops lead to.
func (a *Applier) execute(ops []Op, want map[VSKey]*VirtualServer) (ok []bool, err error) {
	var errs []error
	ok = make([]bool, len(ops))
	if len(ops) > 0 {
		a.cleanOK = false
	}
	failed := map[VSKey]bool{}   // keys with at least one failed op
	notAdded := map[VSKey]bool{} // keys whose add failed: skip their destinations
	for i, op := range ops {
		if op.VS != nil && notAdded[op.VS.Key] {
			continue // already reported by the failed add
		}
		if v := klog.V(4); v.Enabled() {
			v.InfoS("IPVS op", "op", op.String())
		}
		if a.progress != nil && i > 0 && i%progressOps == 0 {
			a.progress()
		}
		if err := a.do(op); err != nil {
			errs = append(errs, opError(op, err))
			if op.VS != nil {
				failed[op.VS.Key] = true
				recordFailure(a, a.retryVS, op.VS.Key, errs[len(errs)-1])
				if op.Kind == OpAddService {
					notAdded[op.VS.Key] = true
				}
			} else {
				recordFailure(a, a.retryAddrs, op.Addr, errs[len(errs)-1])
			}
			continue
		}
		ok[i] = true
		a.changed.Add(1)
		countOp(op.Kind)
		switch op.Kind {
		case OpAddAddress:
			a.addrs[op.Addr] = struct{}{}
		case OpDeleteAddress:
			delete(a.addrs, op.Addr)
		}
	}

	// A server whose ops all succeeded now is what was wanted.
	var partial map[VSKey][]int
	for i, op := range ops {
		switch {
		case op.VS == nil:
		case failed[op.VS.Key]:
			if partial == nil {
				partial = map[VSKey][]int{}
			}
			partial[op.VS.Key] = append(partial[op.VS.Key], i)
		case want[op.VS.Key] != nil:
			a.observed[op.VS.Key] = want[op.VS.Key]
		default:
			delete(a.observed, op.VS.Key)
		}
	}
	// Otherwise, replay what succeeded on what was there.
	for key, idx := range partial {
		if vs := settle(a.observed[key], ops, idx, ok); vs != nil {
			a.observed[key] = vs
		} else {
			delete(a.observed, key)
		}
	}
	if len(ops) > 0 {
		klog.V(2).InfoS("Applied IPVS changes", "ops", len(ops), "failed", len(errs))
	}
	return ok, errors.Join(errs...)
}

// progressOps is how many ops execute runs between two calls of
// ApplierOptions.Progress.
const progressOps = 1000

// TakeChanged returns how many kernel objects the applier changed since
// the last call (for kubeipvsproxy_sync_objects_changed).
func (a *Applier) TakeChanged() int { return int(a.changed.Swap(0)) }

// countOp counts a kernel operation that succeeded
// (kubeipvsproxy_netlink_operations_total).
func countOp(k OpKind) {
	sub, op := metrics.SubsystemIPVS, metrics.OpUpdate
	switch k {
	case OpAddAddress, OpDeleteAddress:
		sub = metrics.SubsystemAddress
	}
	switch k {
	case OpAddAddress, OpAddService, OpAddDestination:
		op = metrics.OpAdd
	case OpDeleteAddress, OpDeleteService, OpDeleteDestination:
		op = metrics.OpDelete
	}
	metrics.NetlinkOperationsTotal.WithLabelValues(sub, op).Inc()
}

// do runs one op against the kernel.
func (a *Applier) do(op Op) error {
	switch op.Kind {
	case OpAddAddress:
		return a.links.AddAddress(op.Addr)
	case OpDeleteAddress:
		return a.links.DeleteAddress(op.Addr)
	}
	if op.VS == nil {
		return fmt.Errorf("%s without a virtual server", op.Kind)
	}
	switch op.Kind {
	case OpAddService:
		return a.ipvs.AddService(op.VS)
	case OpUpdateService:
		return a.ipvs.UpdateService(op.VS)
	case OpDeleteService:
		return a.ipvs.DeleteService(op.VS.Key)
	case OpAddDestination:
		return a.ipvs.AddDestination(op.VS.Key, op.RS)
	case OpUpdateDestination:
		return a.ipvs.UpdateDestination(op.VS.Key, op.RS)
	case OpDeleteDestination:
		return a.ipvs.DeleteDestination(op.VS.Key, op.RS.Key)
	}
	return fmt.Errorf("unknown op kind %s", op.Kind)
}

// opError names the op (as a command line) and the Service it serves.
func opError(op Op, err error) error {
	if op.VS != nil && op.VS.Service != (servicecache.ServiceKey{}) {
		svc := op.VS.Service.String()
		if op.VS.PortName != "" {
			svc += ":" + op.VS.PortName
		}
		return &opFailure{kind: op.Kind, msg: fmt.Sprintf("%s (service %s): %v", op, svc, err), err: err}
	}
	return &opFailure{kind: op.Kind, msg: fmt.Sprintf("%s: %v", op, err), err: err}
}

// settle replays the successful ops of one virtual server (indexes idx into
// ops, in execution order) on its previous state vs.
func settle(vs *VirtualServer, ops []Op, idx []int, ok []bool) *VirtualServer {
	var dests []Op
	for _, i := range idx {
		if !ok[i] {
			continue
		}
		op := ops[i]
		switch op.Kind {
		case OpAddService:
			c := *op.VS
			c.RealServers = nil
			vs = &c
		case OpUpdateService:
			c := *op.VS
			c.RealServers = nil
			if vs != nil {
				c.RealServers = vs.RealServers
			}
			vs = &c
		case OpDeleteService:
			vs, dests = nil, nil
		default:
			dests = append(dests, op)
		}
	}
	if vs == nil || len(dests) == 0 {
		return vs
	}
	c := *vs
	c.RealServers = applyDestOps(vs.RealServers, dests)
	return &c
}

// applyDestOps merges destination ops into a sorted list, into a new slice
// (the old one may be shared).
func applyDestOps(old []RealServer, dests []Op) []RealServer {
	old = sortedRSIfNeeded(old)
	slices.SortStableFunc(dests, func(x, y Op) int { return x.RS.Key.Compare(y.RS.Key) })
	out := make([]RealServer, 0, len(old)+len(dests))
	i, j := 0, 0
	for i < len(old) || j < len(dests) {
		switch {
		case j == len(dests) || (i < len(old) && old[i].Key.Compare(dests[j].RS.Key) < 0):
			out = append(out, old[i])
			i++
			continue
		case i < len(old) && old[i].Key == dests[j].RS.Key:
			i++ // replaced or deleted below
		}
		if dests[j].Kind != OpDeleteDestination {
			out = append(out, dests[j].RS)
		}
		j++
	}
	return out
}
