package iptables

import (
	"errors"
	"fmt"
	"slices"
	"testing"
)

// A hash set at maxelem refuses new entries with IPSET_ERR_HASH_FULL:
// AddEntries adds what fits, goes on past the refusals and returns them
// in a *SetFullError; an entry already present is still fine (-exist).
func TestKernelSetFull(t *testing.T) {
	requireKernel(t, BackendNFT)
	enterNewNetns(t)
	set, err := NewNetlinkIPSet()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	spec := SetSpec{Name: "KUBE-CLUSTER-IP", Type: HashIPPort, Family: IPv4, MaxElem: 2}
	if err := set.EnsureSet(spec); err != nil {
		t.Fatal(err)
	}
	var entries []Entry
	for i := 1; i <= 4; i++ {
		entries = append(entries, Entry{IP: ip(fmt.Sprintf("10.96.0.%d", i)), Proto: ProtoTCP, Port: 80})
	}
	err = set.AddEntries(spec, entries)
	var full *SetFullError
	if !errors.As(err, &full) || full.Set != spec.Name || !slices.Equal(full.Refused, entries[2:]) {
		t.Fatalf("adding 4 entries to a set of maxelem 2: err = %v, want a SetFullError refusing %v", err, entries[2:])
	}
	got, err := set.ListEntries(spec)
	if slices.SortFunc(got, compareEntries); err != nil || !slices.Equal(got, entries[:2]) {
		t.Fatalf("set holds %v (%v), want %v", got, err, entries[:2])
	}
	if err := set.AddEntries(spec, entries[:2]); err != nil {
		t.Fatalf("re-adding present entries to a full set: %v", err)
	}
	// Room again after a deletion.
	if err := set.DelEntries(spec, entries[:1]); err != nil {
		t.Fatal(err)
	}
	if err := set.AddEntries(spec, entries[2:3]); err != nil {
		t.Fatalf("adding with room: %v", err)
	}
	// Other errors are not set-full errors: a set that does not exist.
	err = set.AddEntries(SetSpec{Name: "KUBE-EXTERNAL-IP", Type: HashIPPort, Family: IPv4, MaxElem: 2}, entries[:1])
	if err == nil || errors.As(err, &full) {
		t.Fatalf("adding to a missing set: err = %v, want a plain error", err)
	}
	t.Logf("set full: %v", full)
}
