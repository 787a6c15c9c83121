package iptables

import (
	"errors"
	"fmt"
	"slices"
)

// Applier makes the kernel match a Desired plan, touching only what
// differs: missing set entries are added, then chains whose content differs
// are rewritten, then jumps are ensured, then stale entries are deleted
// (after the rules changed, so nothing in use disappears first). Calls must
// not overlap: the sync loop owns the Applier.
type Applier struct {
	IPSet  IPSet
	Tables map[Family]Tables
}

// Changes reports what an Apply changed; empty when the kernel already
// matched the plan.
type Changes struct {
	EntriesAdded   int
	EntriesDeleted int
	ChainsWritten  []string // "IPv4 nat/KUBE-SERVICES"
	JumpsInserted  []string // "IPv4 nat/PREROUTING -> KUBE-SERVICES"
}

// Empty reports whether nothing was changed.
func (c Changes) Empty() bool {
	return c.EntriesAdded == 0 && c.EntriesDeleted == 0 && len(c.ChainsWritten) == 0 && len(c.JumpsInserted) == 0
}

// Apply applies every family of d. It goes on after a failure where that is
// safe and returns all errors joined; Changes counts what was done anyway.
func (a *Applier) Apply(d *Desired) (Changes, error) {
	var ch Changes
	if d == nil {
		return ch, errors.New("nothing to apply: nil plan")
	}
	var errs []error
	for _, p := range d.Families {
		if p == nil {
			continue
		}
		if err := a.applyFamily(p, &ch); err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", p.Family, err))
		}
	}
	return ch, errors.Join(errs...)
}

// setDiff is what one set needs.
type setDiff struct {
	spec     SetSpec
	add, del []Entry
}

func (a *Applier) applyFamily(p *FamilyPlan, ch *Changes) error {
	tables := a.Tables[p.Family]
	if tables == nil || a.IPSet == nil {
		return errors.New("applier has no IPSet or no Tables for this family")
	}
	var errs []error

	// 1. Sets exist (rules refer to them) and what each lacks or has extra.
	var diffs []setDiff
	for _, sp := range p.Sets {
		if err := a.IPSet.EnsureSet(sp.Spec); err != nil {
			errs = append(errs, err)
			continue
		}
		have, err := a.IPSet.ListEntries(sp.Spec)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		diffs = append(diffs, diffEntries(sp, have))
	}

	// 2. Add missing entries before rules may start matching the set.
	for _, d := range diffs {
		if len(d.add) == 0 {
			continue
		}
		if err := a.IPSet.AddEntries(d.spec, d.add); err != nil {
			errs = append(errs, err)
			continue
		}
		ch.EntriesAdded += len(d.add)
	}

	// 3. Rewrite the chains that differ, all in one restore.
	listed := map[Table]map[string][]Rule{}
	for _, t := range []Table{TableNAT, TableFilter} {
		chains, err := tables.ListTable(t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		listed[t] = chains
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
		if err := tables.ReplaceChains(write); err != nil {
			errs = append(errs, err)
			restored = false
		} else {
			for _, c := range write {
				ch.ChainsWritten = append(ch.ChainsWritten, fmt.Sprintf("%v %s/%s", p.Family, c.Table, c.Name))
			}
		}
	}

	// 4. Jumps: inserted at the top when missing (anywhere in the built-in
	// chain counts, like iptables -C), once their target exists.
	for _, j := range p.Jumps {
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
		if err := tables.InsertJump(j); err != nil {
			errs = append(errs, err)
			continue
		}
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
	}
	return errors.Join(errs...)
}

// diffEntries compares a set's desired (sorted) entries with the kernel's.
func diffEntries(sp SetPlan, have []Entry) setDiff {
	d := setDiff{spec: sp.Spec}
	haveSet := make(map[Entry]struct{}, len(have))
	for _, e := range have {
		haveSet[e] = struct{}{}
	}
	want := make(map[Entry]struct{}, len(sp.Entries))
	for _, e := range sp.Entries {
		want[e] = struct{}{}
		if _, ok := haveSet[e]; !ok {
			d.add = append(d.add, e)
		}
	}
	for e := range haveSet {
		if _, ok := want[e]; !ok {
			d.del = append(d.del, e)
		}
	}
	slices.SortFunc(d.del, compareEntries)
	return d
}

// Cleanup removes everything we own for the given families: jumps, then
// chains (flushed before any is deleted), then sets (which the kernel
// refuses to destroy while rules use them). Missing pieces are fine.
func (a *Applier) Cleanup(families []Family) error {
	var errs []error
	for _, f := range families {
		tables := a.Tables[f]
		if tables == nil {
			errs = append(errs, fmt.Errorf("%v: applier has no Tables for this family", f))
			continue
		}
		for _, t := range []Table{TableNAT, TableFilter} {
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
		for _, t := range []Table{TableNAT, TableFilter} {
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
