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
	// (already present is fine). It stops at the first failure, but for
	// entries refused because the set is full: it goes on past those and
	// returns them in a *SetFullError when nothing else failed.
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

// SetFullError lists the entries a hash set refused because it already
// holds maxelem entries (the kernel's IPSET_ERR_HASH_FULL, `ipset add`'s
// "Hash is full, cannot add more elements"). The other entries were
// added.
type SetFullError struct {
	Set     string
	Refused []Entry
	Err     error // the first refusal
}

func (e *SetFullError) Error() string {
	return fmt.Sprintf("ipset add %s: set full, %d entries refused (first %s): %v", e.Set, len(e.Refused), e.Refused[0], e.Err)
}

func (e *SetFullError) Unwrap() error { return e.Err }

func checkOwnedSet(name string) error {
	if !OwnsSet(name) {
		return fmt.Errorf("refusing to touch ipset %q: not one of ours", name)
	}
	return nil
}
