package iptables

import (
	"fmt"
	"maps"
	"reflect"
	"slices"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// Planner plans like Plan and remembers each Service's share of the sets,
// counting how many Services hold each entry. The next plan re-plans only
// the Services in the snapshot's Changed list and rebuilds only the sets
// whose content changed, sharing the others' entry slices with the
// previous plan: an incremental sync's computing stays the size of the
// change, not of the cluster. A new Config or node re-plans everything.
// Not safe for concurrent use.
type Planner struct {
	cfg   Config // without ExternalLocalMarks
	marks []Entry
	node  servicecache.Node
	valid bool
	// layout is one item per configured family, in order: a memo, or the
	// problem with a family that is unknown or repeated.
	layout []planItem
	prefix []string // problems before any family
	// gen counts plans: a plan's owners answer only while it is the last.
	gen uint64
}

type planItem struct {
	memo    *familyMemo
	problem string
}

// familyMemo is what a Planner remembers of one family.
type familyMemo struct {
	b        *familyBuilder
	setup    []string // problems with the family's settings
	parts    map[servicecache.ServiceKey]*servicePart
	sorted   map[string][]Entry // each set's entries as last planned
	denied   map[Entry]int
	problems map[servicecache.ServiceKey][]string
	// svcProblems: the ServiceProblems of each Service that has any.
	svcProblems map[servicecache.ServiceKey][]ServiceProblem
	chains      []Chain
	// pending: per set, the entries that came (+1) or went (-1) since
	// sorted was built; all: every set is rebuilt from counts.
	pending     map[string]map[Entry]int
	all         bool
	deniedDirty bool
}

// Reset forgets everything: the next plan re-plans every Service.
func (p *Planner) Reset() { p.valid = false }

// Plan computes the desired ipsets and chains of snap, re-planning only
// snap.Changed when the configuration and node are those of the last plan.
func (p *Planner) Plan(snap *servicecache.Snapshot, cfg Config) *Desired {
	if snap == nil {
		snap = &servicecache.Snapshot{}
	}
	p.marks = cfg.ExternalLocalMarks
	cfg.ExternalLocalMarks = nil
	all := !p.valid || !sameNode(p.node, snap.Node) || !reflect.DeepEqual(p.cfg, cfg)
	if all {
		p.reset(snap.Node, cfg)
	}
	for _, it := range p.layout {
		m := it.memo
		if m == nil {
			continue
		}
		if all {
			for _, svc := range snap.Services {
				if svc != nil {
					m.add(svc.Key, m.b.service(svc))
				}
			}
		} else {
			for _, key := range snap.Changed {
				m.replace(key, lookupService(snap, key))
			}
		}
	}
	d := &Desired{Problems: slices.Clone(p.prefix)}
	for _, it := range p.layout {
		if it.memo == nil {
			d.Problems = append(d.Problems, it.problem)
			continue
		}
		d.Families = append(d.Families, it.memo.plan(p.marks))
		d.Problems = append(d.Problems, it.memo.allProblems()...)
		for _, probs := range it.memo.svcProblems {
			d.ServiceProblems = append(d.ServiceProblems, probs...)
		}
	}
	// By Service; stable, so each Service's stay in family order.
	slices.SortStableFunc(d.ServiceProblems, func(a, b ServiceProblem) int { return a.Service.Compare(b.Service) })
	p.gen++
	d.owners = p.owners(p.gen)
	return d
}

// owners returns the function that finds, from the memo as the plan of
// generation gen left it, the Services whose parts hold refused entries.
// It goes over every part of the family once, which is acceptable only
// because a full set is rare.
func (p *Planner) owners(gen uint64) func(Family, []RefusedEntry) {
	return func(f Family, refused []RefusedEntry) {
		if p.gen != gen {
			return // planned again since: the memo is another plan's
		}
		var m *familyMemo
		for _, it := range p.layout {
			if it.memo != nil && it.memo.b.f == f {
				m = it.memo
			}
		}
		if m == nil {
			return
		}
		want := map[setEntry][]int{} // index into refused
		for i, r := range refused {
			for _, s := range setSkeleton {
				if setName(s.name, f) == r.Set {
					se := setEntry{s.name, r.Entry}
					want[se] = append(want[se], i)
				}
			}
		}
		for key, part := range m.parts {
			for _, se := range part.entries {
				for _, i := range want[se] {
					refused[i].Services = append(refused[i].Services, key)
				}
			}
		}
		for i := range refused {
			slices.SortFunc(refused[i].Services, servicecache.ServiceKey.Compare)
			refused[i].Services = slices.Compact(refused[i].Services)
		}
	}
}

func (p *Planner) reset(node servicecache.Node, cfg Config) {
	// The memo's builders point at p.cfg: keep a copy of the caller's.
	p.cfg = cloneConfig(cfg)
	p.node = servicecache.Node{Name: node.Name, Zone: node.Zone, Addresses: slices.Clone(node.Addresses)}
	p.valid = true
	p.layout, p.prefix = nil, nil
	if len(cfg.Families) == 0 {
		p.prefix = append(p.prefix, "no IP family configured: nothing planned")
	}
	seen := map[Family]bool{}
	for _, f := range p.cfg.Families {
		if (f != IPv4 && f != IPv6) || seen[f] {
			p.layout = append(p.layout, planItem{problem: fmt.Sprintf("family %v: unknown or repeated, ignored", f)})
			continue
		}
		seen[f] = true
		m := &familyMemo{
			parts:       map[servicecache.ServiceKey]*servicePart{},
			sorted:      map[string][]Entry{},
			denied:      map[Entry]int{},
			problems:    map[servicecache.ServiceKey][]string{},
			svcProblems: map[servicecache.ServiceKey][]ServiceProblem{},
			pending:     map[string]map[Entry]int{},
			all:         true,
			deniedDirty: true,
		}
		m.b = newFamilyBuilder(f, p.node, &p.cfg, &m.setup)
		p.layout = append(p.layout, planItem{memo: m})
	}
}

// cloneConfig copies the slices and maps a caller might modify later.
func cloneConfig(c Config) Config {
	c.Families = slices.Clone(c.Families)
	c.ClusterCIDRs = slices.Clone(c.ClusterCIDRs)
	c.NodePortIPs = slices.Clone(c.NodePortIPs)
	c.LocalAddresses = slices.Clone(c.LocalAddresses)
	c.NodeIPs = slices.Clone(c.NodeIPs)
	if c.NotLocal != nil {
		m := make(map[Family][]string, len(c.NotLocal))
		for f, args := range c.NotLocal {
			m[f] = slices.Clone(args)
		}
		c.NotLocal = m
	}
	return c
}

// sameNode compares what the planner reads of the node.
func sameNode(a, b servicecache.Node) bool {
	return a.Name == b.Name && slices.Equal(a.Addresses, b.Addresses)
}

// lookupService finds key in the snapshot's Services, sorted by key as the
// service cache hands them out (a snapshot that is not sorted is searched
// in full); nil when the Service is gone.
func lookupService(snap *servicecache.Snapshot, key servicecache.ServiceKey) *servicecache.Service {
	i, found := slices.BinarySearchFunc(snap.Services, key, func(s *servicecache.Service, k servicecache.ServiceKey) int {
		if s == nil {
			return -1
		}
		return s.Key.Compare(k)
	})
	if found {
		// The first of its key; a repeated key is merged (see add).
		return snap.Services[i]
	}
	if slices.IsSortedFunc(snap.Services, func(a, b *servicecache.Service) int {
		if a == nil || b == nil {
			return 0
		}
		return a.Key.Compare(b.Key)
	}) {
		return nil
	}
	for _, s := range snap.Services {
		if s != nil && s.Key == key {
			return s
		}
	}
	return nil
}

// replace swaps the part of one Service for its current one (none when
// svc is nil). A snapshot listing one key more than once has them merged,
// as Plan over the whole snapshot does.
func (m *familyMemo) replace(key servicecache.ServiceKey, svc *servicecache.Service) {
	if old := m.parts[key]; old != nil {
		m.count(old, -1)
		delete(m.parts, key)
		delete(m.problems, key)
		delete(m.svcProblems, key)
	}
	if svc != nil {
		m.add(key, m.b.service(svc))
	}
}

// add counts a part in; a key already present gets the part appended.
func (m *familyMemo) add(key servicecache.ServiceKey, part *servicePart) {
	m.count(part, +1)
	if old := m.parts[key]; old != nil {
		merged := &servicePart{
			entries:     append(slices.Clip(old.entries), part.entries...),
			denied:      append(slices.Clip(old.denied), part.denied...),
			problems:    append(slices.Clip(old.problems), part.problems...),
			svcProblems: append(slices.Clip(old.svcProblems), part.svcProblems...),
		}
		part = merged
	}
	if len(part.entries) == 0 && len(part.denied) == 0 && len(part.problems) == 0 && len(part.svcProblems) == 0 {
		delete(m.parts, key)
		delete(m.problems, key)
		delete(m.svcProblems, key)
		return
	}
	m.parts[key] = part
	if len(part.problems) > 0 {
		m.problems[key] = part.problems
	} else {
		delete(m.problems, key)
	}
	if len(part.svcProblems) > 0 {
		m.svcProblems[key] = part.svcProblems
	} else {
		delete(m.svcProblems, key)
	}
}

// count adds (delta +1) or removes (-1) a part's entries, noting the
// entries that come into or go out of a set.
func (m *familyMemo) count(part *servicePart, delta int) {
	for _, se := range part.entries {
		c := m.b.counts[se.base]
		if c == nil {
			c = map[Entry]int{}
			m.b.counts[se.base] = c
		}
		n := c[se.e] + delta
		if n <= 0 {
			delete(c, se.e)
		} else {
			c[se.e] = n
		}
		if m.all || (n > 0) == (n-delta > 0) {
			continue // no set changes
		}
		pm := m.pending[se.base]
		if pm == nil {
			pm = map[Entry]int{}
			m.pending[se.base] = pm
		}
		pm[se.e] += delta
	}
	for _, e := range part.denied {
		n := m.denied[e] + delta
		if n <= 0 {
			delete(m.denied, e)
		} else {
			m.denied[e] = n
		}
		if (n > 0) != (n-delta > 0) {
			m.deniedDirty = true
		}
	}
}

// plan builds the family's plan. A set whose content changed gets a new
// sorted slice, merged from the last one and what came and went; the
// others keep the last plan's slice.
func (m *familyMemo) plan(marks []Entry) *FamilyPlan {
	b := m.b
	p := &FamilyPlan{Family: b.f, Jumps: slices.Clone(Jumps)}
	changed := m.deniedDirty || m.all
	for i, spec := range SetSpecs(b.f) {
		base := setSkeleton[i].name
		switch {
		case base == setExternalLocalMark:
			// Not from the Services: the IPVS plan's, given whole.
			if want := familyMarks(b.f, marks); m.all || !slices.Equal(want, m.sorted[base]) {
				m.sorted[base] = want
				changed = changed || (len(want) > 0) != (b.markEntries > 0)
				b.markEntries = len(want)
			}
		case m.all:
			m.sorted[base] = slices.SortedFunc(maps.Keys(b.counts[base]), compareEntries)
		case len(m.pending[base]) > 0:
			var came, went []Entry
			for e, n := range m.pending[base] {
				switch {
				case n > 0:
					came = append(came, e)
				case n < 0:
					went = append(went, e)
				}
			}
			if len(came)+len(went) > 0 {
				slices.SortFunc(came, compareEntries)
				slices.SortFunc(went, compareEntries)
				m.sorted[base] = mergeEntries(m.sorted[base], came, went)
				changed = true
			}
		}
		p.Sets = append(p.Sets, SetPlan{Spec: spec, Entries: m.sorted[base]})
	}
	clear(m.pending)
	m.all = false
	if m.deniedDirty {
		denied := slices.SortedFunc(maps.Keys(m.denied), compareEntries)
		b.outFilter = make([]Rule, len(denied))
		for i, e := range denied {
			b.outFilter[i] = outFilterRule(e)
		}
		m.deniedDirty = false
	}
	if changed || m.chains == nil {
		m.chains = b.chains()
	}
	p.Chains = m.chains
	return p
}

// mergeEntries returns a new sorted slice: have with came added and went
// removed (all three sorted; came not in have, went in have).
func mergeEntries(have, came, went []Entry) []Entry {
	out := make([]Entry, 0, len(have)+len(came)-len(went))
	i, j := 0, 0
	for _, e := range have {
		for i < len(came) && compareEntries(came[i], e) < 0 {
			out = append(out, came[i])
			i++
		}
		for j < len(went) && compareEntries(went[j], e) < 0 {
			j++
		}
		if j < len(went) && compareEntries(went[j], e) == 0 {
			j++
			continue
		}
		out = append(out, e)
	}
	return append(out, came[i:]...)
}

// allProblems: the family's setting problems, then each Service's in key
// order.
func (m *familyMemo) allProblems() []string {
	out := slices.Clone(m.setup)
	keys := slices.SortedFunc(maps.Keys(m.problems), servicecache.ServiceKey.Compare)
	for _, k := range keys {
		out = append(out, m.problems[k]...)
	}
	return out
}

// familyMarks are the valid members of KUBE-EXTERNAL-LOCAL-MARK of family
// f among marks, sorted and unique.
func familyMarks(f Family, marks []Entry) []Entry {
	var out []Entry
	for _, e := range marks {
		if f.Has(e.IP) && e.SkbMark != 0 && e.SkbMark&^e.SkbMarkMask == 0 && e.Port != 0 {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, compareEntries)
	// One mark per address: the kernel keys the entry by address alone.
	return slices.CompactFunc(out, func(a, b Entry) bool { return a.key() == b.key() })
}
