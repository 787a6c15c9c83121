package iptables

import (
	"errors"
	"strings"
	"testing"
)

func countOps(ops []string, prefix string) int {
	n := 0
	for _, o := range ops {
		if strings.HasPrefix(o, prefix) {
			n++
		}
	}
	return n
}

// Between full applies the applier trusts its memory: an incremental apply
// neither lists sets nor saves tables, makes only the needed changes, and
// leaves drift for the next full Apply, which repairs it. A failure makes
// the next incremental apply read the kernel again.
func TestApplyIncremental(t *testing.T) {
	ipset, tables := NewFakeIPSet(), NewFakeTables()
	a := &Applier{IPSet: ipset, Tables: map[Family]Tables{IPv4: tables}}
	snap := shapeSnapshot(50)
	cfg := shapeConfig()
	if _, err := a.Apply(Plan(snap, cfg)); err != nil {
		t.Fatal(err)
	}

	// One Service fewer: one entry less in KUBE-CLUSTER-IP (and its node
	// port set if it has one), no listing.
	smaller := *snap
	smaller.Services = snap.Services[1:]
	ipset.Ops, tables.Ops = nil, nil
	ch, err := a.ApplyIncremental(Plan(&smaller, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if n := countOps(ipset.Ops, "list") + countOps(tables.Ops, "-t "); n != 0 {
		t.Fatalf("incremental apply read the kernel: %q %q", ipset.Ops, tables.Ops)
	}
	if ch.EntriesDeleted == 0 || ch.EntriesAdded != 0 || len(ch.ChainsWritten) != 0 {
		t.Fatalf("incremental apply changes %+v, want only deletions", ch)
	}

	// Drift behind the applier's back: incremental applies do not see it.
	for e := range ipset.Sets["KUBE-CLUSTER-IP"].Entries {
		delete(ipset.Sets["KUBE-CLUSTER-IP"].Entries, e)
	}
	if ch, err := a.ApplyIncremental(Plan(&smaller, cfg)); err != nil || !ch.Empty() {
		t.Fatalf("incremental apply over drift: %+v %v, want no change", ch, err)
	}
	ch, err = a.Apply(Plan(&smaller, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if ch.EntriesAdded != len(smaller.Services) {
		t.Fatalf("full apply repaired %d entries, want %d", ch.EntriesAdded, len(smaller.Services))
	}

	// A failed op forgets the memory: the next incremental apply lists.
	ipset.Fail["add KUBE-CLUSTER-IP"] = errors.New("injected")
	if _, err := a.ApplyIncremental(Plan(snap, cfg)); err == nil {
		t.Fatal("no error from a failing add")
	}
	delete(ipset.Fail, "add KUBE-CLUSTER-IP")
	ipset.Ops = nil
	if _, err := a.ApplyIncremental(Plan(snap, cfg)); err != nil {
		t.Fatal(err)
	}
	if countOps(ipset.Ops, "list") == 0 {
		t.Fatalf("after a failure the incremental apply did not read the kernel: %q", ipset.Ops)
	}
	if !ipset.Sets["KUBE-CLUSTER-IP"].Entries[Entry{IP: snap.Services[0].ClusterIPs[0], Proto: ProtoTCP, Port: 80}] {
		t.Fatal("the first Service's entry is missing after the retry")
	}
}
