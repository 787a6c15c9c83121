package iptables

import (
	"errors"
	"fmt"
	"slices"

	"k8s.io/klog/v2"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/metrics"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Applier makes the kernel match a Desired plan, touching only what
// differs: missing set entries are added, then chains whose content differs
// are rewritten, then jumps are ensured, then stale entries are deleted
// (after the rules changed, so nothing in use disappears first). Calls must
// not overlap: the sync loop owns the Applier.
//
// Apply reads the kernel (every set's entries, iptables-save of both
// tables, unless Generation says no rule changed) and repairs any drift. ApplyIncremental trusts what the last
// successful Apply or ApplyIncremental left, kept in memory, so a change
// costs only its own kernel operations, not a dump of every set; a failure
// forgets that memory, and the next call reads the kernel again.
type Applier struct {
	IPSet  IPSet
	Tables map[Family]Tables

	// Generation, when set, returns the nftables ruleset generation
	// (NFTGeneration.Get; only for iptables-nft). A full apply that finds
	// the generation of the last full apply that wrote no rule trusts the
	// rules it knows instead of listing them again (iptables-save): the
	// kernel counts every change to any rule. Sets are listed all the
	// same; they are not nftables objects.
	Generation func() (uint32, error)

	// known is, per family, the state the kernel had after the last
	// successful apply.
	known map[Family]*familyState
	// gen is the generation at the start of the last full apply that wrote
	// no rule and failed nowhere (valid when genOK).
	gen   uint32
	genOK bool
	// listings holds each set's last listing, in the kernel's order and
	// sorted: a hash set lists in the same order while it does not
	// change, so an unchanged listing needs no sort (tens of thousands of
	// entries on every full resync).
	listings map[listingKey]listing
}

type listingKey struct {
	family Family
	set    string
}

type listing struct{ raw, sorted []Entry }

// familyState is what one family's sets and chains hold. Entry slices are
// the plans' own (sorted, never modified once planned).
type familyState struct {
	sets   map[string][]Entry
	chains map[Table]map[string][]Rule
}

// Changes reports what an Apply changed; empty when the kernel already
// matched the plan.
type Changes struct {
	EntriesAdded   int
	EntriesDeleted int
	ChainsWritten  []string // "IPv4 nat/KUBE-SERVICES"
	JumpsInserted  []string // "IPv4 nat/PREROUTING -> KUBE-SERVICES"
	// Refused lists the entries a full set refused (SetFullError). They
	// are not errors: everything else was applied, and each apply tries
	// them again. Not counted as changes.
	Refused []RefusedEntry
}

// RefusedEntry is one entry a full set refused, with the Services that
// want it (known when the plan came from a Planner that has not planned
// again since).
type RefusedEntry struct {
	Family   Family
	Set      string
	Entry    Entry
	Services []servicecache.ServiceKey
}

// Empty reports whether nothing was changed.
func (c Changes) Empty() bool {
	return c.EntriesAdded == 0 && c.EntriesDeleted == 0 && len(c.ChainsWritten) == 0 && len(c.JumpsInserted) == 0
}

// Apply applies every family of d against the kernel as it is now. It
// goes on after a failure where that is safe and returns all errors
// joined; Changes counts what was done anyway.
func (a *Applier) Apply(d *Desired) (Changes, error) { return a.apply(d, true) }

// ApplyIncremental applies d against the state the last successful apply
// left (reading the kernel only for a family it knows nothing of). Use it
// between full resyncs; drift is repaired by the next Apply.
func (a *Applier) ApplyIncremental(d *Desired) (Changes, error) { return a.apply(d, false) }

func (a *Applier) apply(d *Desired, full bool) (Changes, error) {
	var ch Changes
	if d == nil {
		return ch, errors.New("nothing to apply: nil plan")
	}
	var errs []error
	rules := full // list the rules
	gen, genOK := uint32(0), false
	if full && a.Generation != nil {
		var err error
		if gen, err = a.Generation(); err != nil {
			// Listing the rules, as without Generation, is always right.
			klog.InfoS("Listing the rules: the nftables generation cannot be read", "err", err)
		} else {
			genOK = true
			rules = !a.genOK || gen != a.gen
		}
	}
	if full {
		a.genOK = false
	}
	for _, p := range d.Families {
		if p == nil {
			continue
		}
		if err := a.applyFamily(p, &ch, full, rules, d.owners); err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", p.Family, err))
		}
	}
	if genOK && len(errs) == 0 && len(ch.ChainsWritten) == 0 && len(ch.JumpsInserted) == 0 {
		a.gen, a.genOK = gen, true
	}
	return ch, errors.Join(errs...)
}

// setDiff is what one set needs.
type setDiff struct {
	spec     SetSpec
	add, del []Entry
	want     []Entry // the desired entries, sorted
}

// applyFamily applies one family: full lists the sets, rules lists the
// rules (both: against the kernel; neither: against known).
func (a *Applier) applyFamily(p *FamilyPlan, ch *Changes, full, rules bool, owners func(Family, []RefusedEntry)) error {
	tables := a.Tables[p.Family]
	if tables == nil || a.IPSet == nil {
		return errors.New("applier has no IPSet or no Tables for this family")
	}
	known := a.known[p.Family]
	if known == nil {
		full, rules = true, true
	}
	// Forgotten until this apply succeeds.
	delete(a.known, p.Family)
	next := &familyState{sets: make(map[string][]Entry, len(p.Sets)), chains: map[Table]map[string][]Rule{}}
	var errs []error

	// 1. Sets exist (rules refer to them) and what each lacks or has extra.
	var diffs []setDiff
	for _, sp := range p.Sets {
		have, ok := []Entry(nil), false
		if !full {
			have, ok = known.sets[sp.Spec.Name]
		}
		if !ok {
			// ipset create NAME TYPE ... -exist; ipset list NAME
			if err := a.IPSet.EnsureSet(sp.Spec); err != nil {
				errs = append(errs, err)
				continue
			}
			metrics.NetlinkOperationsTotal.WithLabelValues(metrics.SubsystemIPSet, metrics.OpList).Inc()
			listed, err := a.IPSet.ListEntries(sp.Spec)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			have = a.sortListing(listingKey{p.Family, sp.Spec.Name}, listed)
		}
		d := diffEntries(sp, have)
		diffs = append(diffs, d)
		next.sets[sp.Spec.Name] = d.want
	}

	// 2. Add missing entries before rules may start matching the set. A
	// full set's refusals are reported, not failed on: the other sets and
	// the rules are still applied.
	var refused []RefusedEntry
	for _, d := range diffs {
		if len(d.add) == 0 {
			continue
		}
		added := len(d.add)
		if err := a.IPSet.AddEntries(d.spec, d.add); err != nil {
			var full *SetFullError
			if !errors.As(err, &full) {
				errs = append(errs, err)
				continue
			}
			added -= len(full.Refused)
			for _, e := range full.Refused {
				refused = append(refused, RefusedEntry{Family: p.Family, Set: d.spec.Name, Entry: e})
			}
			// What the set holds: the next apply tries them again.
			next.sets[d.spec.Name] = withoutEntries(d.want, full.Refused)
		}
		ch.EntriesAdded += added
		metrics.NetlinkOperationsTotal.WithLabelValues(metrics.SubsystemIPSet, metrics.OpAdd).Add(float64(added))
	}
	if len(refused) > 0 {
		if owners != nil {
			owners(p.Family, refused)
		}
		ch.Refused = append(ch.Refused, refused...)
	}

	// 3. Rewrite the chains that differ, all in one restore.
	listed := map[Table]map[string][]Rule{}
	if rules {
		// iptables-save
		metrics.NetlinkOperationsTotal.WithLabelValues(metrics.SubsystemIPTables, metrics.OpList).Inc()
		all, err := tables.ListTables(ourTables)
		if err != nil {
			errs = append(errs, err)
		} else {
			listed = all
		}
	} else {
		for _, t := range ourTables {
			listed[t] = known.chains[t]
		}
	}
	var write []Chain
	for _, c := range p.Chains {
		if listed[c.Table] == nil {
			continue // listing failed, reported above
		}
		have, exists := listed[c.Table][c.Name]
		if !exists || !rulesEqual(have, c.Rules) {
			write = append(write, c)
		}
	}
	restored := true
	if len(write) > 0 {
		// iptables-restore --noflush with the chains that differ
		if err := tables.ReplaceChains(write); err != nil {
			errs = append(errs, err)
			restored = false
		} else {
			metrics.NetlinkOperationsTotal.WithLabelValues(metrics.SubsystemIPTables, metrics.OpUpdate).Inc()
			for _, c := range write {
				ch.ChainsWritten = append(ch.ChainsWritten, fmt.Sprintf("%v %s/%s", p.Family, c.Table, c.Name))
			}
		}
	}
	for t, chains := range listed {
		m := make(map[string][]Rule, len(chains))
		for name, rules := range chains {
			m[name] = rules
		}
		next.chains[t] = m
	}
	for _, c := range write {
		if next.chains[c.Table] != nil {
			next.chains[c.Table][c.Name] = c.Rules
		}
	}

	// 4. Jumps: inserted at the top when missing (anywhere in the built-in
	// chain counts, like iptables -C), once their target exists. Checked
	// against the kernel when the rules were listed.
	for _, j := range p.Jumps {
		if !rules {
			break
		}
		chains := listed[j.Table]
		if chains == nil {
			continue
		}
		if slices.ContainsFunc(chains[j.From], j.Rule().Equal) {
			continue
		}
		if _, exists := chains[j.To]; !exists && !restored {
			continue // the chain could not be created; that error is reported
		}
		// iptables -t TABLE -I FROM -j TO
		if err := tables.InsertJump(j); err != nil {
			errs = append(errs, err)
			continue
		}
		metrics.NetlinkOperationsTotal.WithLabelValues(metrics.SubsystemIPTables, metrics.OpAdd).Inc()
		ch.JumpsInserted = append(ch.JumpsInserted, fmt.Sprintf("%v %s/%s -> %s", p.Family, j.Table, j.From, j.To))
	}

	// 5. Stale entries go last.
	for _, d := range diffs {
		if len(d.del) == 0 {
			continue
		}
		if err := a.IPSet.DelEntries(d.spec, d.del); err != nil {
			errs = append(errs, err)
			continue
		}
		ch.EntriesDeleted += len(d.del)
		metrics.NetlinkOperationsTotal.WithLabelValues(metrics.SubsystemIPSet, metrics.OpDelete).Add(float64(len(d.del)))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if a.known == nil {
		a.known = map[Family]*familyState{}
	}
	a.known[p.Family] = next
	return nil
}

// withoutEntries returns the sorted entries want without those in drop.
func withoutEntries(want, drop []Entry) []Entry {
	gone := make(map[Entry]bool, len(drop))
	for _, e := range drop {
		gone[e] = true
	}
	return slices.DeleteFunc(slices.Clone(want), func(e Entry) bool { return gone[e] })
}

// sortListing returns a set's listing sorted, reusing the last sort when
// the kernel listed the same entries in the same order.
func (a *Applier) sortListing(key listingKey, listed []Entry) []Entry {
	if last, ok := a.listings[key]; ok && slices.Equal(last.raw, listed) {
		return last.sorted
	}
	sorted := slices.SortedFunc(slices.Values(listed), compareEntries)
	if a.listings == nil {
		a.listings = map[listingKey]listing{}
	}
	a.listings[key] = listing{raw: listed, sorted: sorted}
	return sorted
}

// diffEntries compares a set's desired entries with what it holds, both
// sorted: one merge, no maps (sets hold tens of thousands of entries).
func diffEntries(sp SetPlan, have []Entry) setDiff {
	d := setDiff{spec: sp.Spec}
	want := sp.Entries
	if len(want) == len(have) && (len(want) == 0 || &want[0] == &have[0]) {
		// The very slice the last apply left: a Planner shares the
		// slices of sets that did not change.
		d.want = want
		return d
	}
	if !strictlySortedEntries(want) {
		// Plans are sorted without duplicates; be safe if one is not.
		want = slices.SortedFunc(slices.Values(want), compareEntries)
		want = slices.CompactFunc(want, func(a, b Entry) bool { return compareEntries(a, b) == 0 })
	}
	i, j := 0, 0
	for i < len(want) || j < len(have) {
		switch {
		case j == len(have):
			d.add = append(d.add, want[i])
			i++
		case i == len(want):
			d.del = append(d.del, have[j])
			j++
		default:
			switch c := compareEntries(want[i], have[j]); {
			case c == 0:
				i++
				j++
			case want[i].key() == have[j].key():
				// Only the skbmark differs: the add (-exist) rewrites
				// it in place, and a del would remove the entry.
				d.add = append(d.add, want[i])
				i++
				j++
			case c < 0:
				d.add = append(d.add, want[i])
				i++
			default:
				d.del = append(d.del, have[j])
				j++
			}
		}
	}
	d.want = want
	return d
}

func strictlySortedEntries(es []Entry) bool {
	for i := 1; i < len(es); i++ {
		if compareEntries(es[i-1], es[i]) >= 0 {
			return false
		}
	}
	return true
}

// Cleanup removes everything we own for the given families: jumps, then
// chains (flushed before any is deleted), then sets (which the kernel
// refuses to destroy while rules use them). Missing pieces are fine.
func (a *Applier) Cleanup(families []Family) error {
	a.known, a.genOK, a.listings = nil, false, nil
	var errs []error
	for _, f := range families {
		tables := a.Tables[f]
		if tables == nil {
			errs = append(errs, fmt.Errorf("%v: applier has no Tables for this family", f))
			continue
		}
		for _, t := range ourTables {
			chains, err := tables.ListTable(t)
			if err != nil {
				errs = append(errs, fmt.Errorf("%v: %w", f, err))
				continue
			}
			for _, j := range Jumps {
				// A jump may have been inserted more than once by hand.
				for _, r := range chains[j.From] {
					if j.Table != t || !r.Equal(j.Rule()) {
						continue
					}
					if err := tables.DeleteJump(j); err != nil {
						errs = append(errs, fmt.Errorf("%v: %w", f, err))
					}
				}
			}
		}
		for _, t := range ourTables {
			var names []string
			for _, c := range chainSkeleton {
				if c.table == t {
					names = append(names, c.name)
				}
			}
			if err := tables.DeleteChains(t, names); err != nil {
				errs = append(errs, fmt.Errorf("%v: %w", f, err))
			}
		}
	}
	if a.IPSet == nil {
		return errors.Join(append(errs, errors.New("applier has no IPSet"))...)
	}
	for _, f := range families {
		for _, s := range SetSpecs(f) {
			if err := a.IPSet.DestroySet(s.Name); err != nil {
				errs = append(errs, fmt.Errorf("%v: %w", f, err))
			}
		}
	}
	return errors.Join(errs...)
}
