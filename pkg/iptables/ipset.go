package iptables

import "fmt"

// IPSet manages ipsets in the kernel. Each method names the `ipset` command
// it is equivalent to. Implementations refuse to destroy a set that is not
// ours (see OwnsSet) and validate entries before sending them.
type IPSet interface {
	// EnsureSet creates the set unless a compatible one exists:
	//   ipset create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 -exist
	// A set of the same name with another type or options is an error.
	EnsureSet(spec SetSpec) error
	// ListEntries returns the members of the set: ipset list KUBE-CLUSTER-IP
	ListEntries(spec SetSpec) ([]Entry, error)
	// AddEntries adds the entries, each like
	//   ipset add KUBE-CLUSTER-IP 10.96.0.10,tcp:80 -exist
	// (already present is fine). It stops at the first failure.
	AddEntries(spec SetSpec, entries []Entry) error
	// DelEntries deletes the entries, each like
	//   ipset del KUBE-CLUSTER-IP 10.96.0.10,tcp:80 -exist
	// (already absent is fine). It stops at the first failure.
	DelEntries(spec SetSpec, entries []Entry) error
	// DestroySet destroys one of our sets (ipset destroy KUBE-CLUSTER-IP);
	// a missing set is not an error. The kernel refuses while iptables
	// rules still reference the set.
	DestroySet(name string) error
}

func checkOwnedSet(name string) error {
	if !OwnsSet(name) {
		return fmt.Errorf("refusing to touch ipset %q: not one of ours", name)
	}
	return nil
}
