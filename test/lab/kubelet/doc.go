// Package kubelet is the lab's stand-in for a kubelet and a CNI plugin. It
// runs in the lab VM's root network namespace, one instance per node, and
// turns the Pods bound to its node into processes in per-pod network
// namespaces wired to the node's namespace the way a point-to-point CNI
// does: the pod has IP/32 on eth0 and a default route via the pod CIDR's
// first address, which the node side of every pod veth carries, so all pod
// traffic goes through the node namespace's IP stack (where the proxy under
// test programs IPVS).
//
// With an IPv6 pod CIDR as well (--pod-cidr 10.244.1.0/24,fd00:10:244:1::/64)
// pods are dual-stack: eth0 also has IP6/128 and a default route via
// fe80::1, which the node side of every pod veth carries, and
// status.podIPs lists the IPv4 address first, then the IPv6 one. Readiness
// probes and POD_IP use the IPv4 address.
//
// It also has a tiny round-robin scheduler (Scheduler) for pods created
// without spec.nodeName.
//
// State directory layout (--state-dir, /run/lab by default):
//
//	<state-dir>/pods/<namespace>_<name>.log   the pod process's stdout and stderr (appended, kept after deletion)
//	<state-dir>/pods/<namespace>/<name>/      per-pod control directory, created when the pod starts, removed at teardown
//	<state-dir>/pods/<namespace>/<name>/unready   while this file exists the pod is reported NOT ready (see UnreadyFile)
//	<state-dir>/<node>/p<8-hex>.json          one record per pod network namespace this kubelet created,
//	                                          written before the namespace exists; a restarted kubelet
//	                                          tears down exactly these
//
// Names derived from the pod UID's first 8 hex digits: pod network namespace
// p<hex>, node-side veth v<hex> (in the node namespace), pod-side eth0.
package kubelet
