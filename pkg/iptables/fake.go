package iptables

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// FakeIPSet is an in-memory IPSet that records each call as the `ipset`
// command it stands for. Fail makes calls fail: an op whose text starts with
// a key gets that error.
type FakeIPSet struct {
	mu   sync.Mutex
	Sets map[string]*FakeSet
	Ops  []string
	Fail map[string]error
	// FullAt makes a set full at that many entries: adding another is
	// refused as the kernel refuses it at maxelem (*SetFullError).
	FullAt map[string]int
}

// FakeSet is one set of a FakeIPSet.
type FakeSet struct {
	Spec    SetSpec
	Entries map[Entry]bool
}

var _ IPSet = (*FakeIPSet)(nil)

func NewFakeIPSet() *FakeIPSet {
	return &FakeIPSet{Sets: map[string]*FakeSet{}, Fail: map[string]error{}, FullAt: map[string]int{}}
}

// op records an op and returns the injected failure, if any.
func (f *FakeIPSet) op(text string) error {
	f.Ops = append(f.Ops, text)
	for prefix, err := range f.Fail {
		if strings.HasPrefix(text, prefix) {
			return err
		}
	}
	return nil
}

func (f *FakeIPSet) EnsureSet(spec SetSpec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := checkOwnedSet(spec.Name); err != nil {
		return err
	}
	if err := f.op(spec.CreateArgs() + " -exist"); err != nil {
		return err
	}
	if s, ok := f.Sets[spec.Name]; ok {
		if s.Spec.CreateArgs() != spec.CreateArgs() {
			return fmt.Errorf("ipset %s -exist: set exists as %q", spec.CreateArgs(), s.Spec.CreateArgs())
		}
		return nil
	}
	f.Sets[spec.Name] = &FakeSet{Spec: spec, Entries: map[Entry]bool{}}
	return nil
}

func (f *FakeIPSet) ListEntries(spec SetSpec) ([]Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.op("list " + spec.Name); err != nil {
		return nil, err
	}
	s, ok := f.Sets[spec.Name]
	if !ok {
		return nil, fmt.Errorf("ipset list %s: set does not exist", spec.Name)
	}
	var out []Entry
	for e := range s.Entries {
		out = append(out, e)
	}
	slices.SortFunc(out, compareEntries)
	return out, nil
}

func (f *FakeIPSet) AddEntries(spec SetSpec, entries []Entry) error {
	return f.addDel("add", spec, entries)
}

func (f *FakeIPSet) DelEntries(spec SetSpec, entries []Entry) error {
	return f.addDel("del", spec, entries)
}

func (f *FakeIPSet) addDel(verb string, spec SetSpec, entries []Entry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := checkOwnedSet(spec.Name); err != nil {
		return err
	}
	var full *SetFullError
	for _, e := range entries {
		text := verb + " " + spec.Name + " " + e.String()
		if err := spec.Validate(e); err != nil {
			return fmt.Errorf("ipset %s: %w", text, err)
		}
		if err := f.op(text); err != nil {
			return fmt.Errorf("ipset %s -exist: %w", text, err)
		}
		s, ok := f.Sets[spec.Name]
		if !ok {
			return fmt.Errorf("ipset %s: set does not exist", text)
		}
		if verb == "add" {
			if n, ok := f.FullAt[spec.Name]; ok && !s.Entries[e] && len(s.Entries) >= n {
				if full == nil {
					full = &SetFullError{Set: spec.Name, Err: fmt.Errorf("ipset %s -exist: Hash is full, cannot add more elements", text)}
				}
				full.Refused = append(full.Refused, e)
				continue
			}
			// Like the kernel: one entry per key, an add (-exist)
			// rewrites the skbmark.
			f.deleteKey(s, e)
			s.Entries[e] = true
		} else {
			f.deleteKey(s, e)
		}
	}
	if full != nil {
		return full
	}
	return nil
}

// deleteKey removes the entry of e's key, whatever its extensions, as the
// kernel looks entries up.
func (f *FakeIPSet) deleteKey(s *FakeSet, e Entry) {
	if s.Entries[e] || !s.Spec.SkbInfo {
		delete(s.Entries, e)
		return
	}
	for have := range s.Entries {
		if have.key() == e.key() {
			delete(s.Entries, have)
		}
	}
}

// Has reports whether the set exists; use it as FakeTables.SetExists.
func (f *FakeIPSet) Has(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.Sets[name]
	return ok
}

func (f *FakeIPSet) DestroySet(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := checkOwnedSet(name); err != nil {
		return err
	}
	if err := f.op("destroy " + name); err != nil {
		return err
	}
	delete(f.Sets, name)
	return nil
}

// FakeTables is an in-memory Tables for one family that records each call
// as the command it stands for ("-S", "restore", "-I", "-D", "restore -X").
// ReplaceChains checks, like the kernel, that every -j target is a chain
// that exists (or a built-in target) and, when SetExists is set, that every
// --match-set names an existing set.
type FakeTables struct {
	mu        sync.Mutex
	Chains    map[Table]map[string][]Rule // built-in chains included
	Ops       []string
	Fail      map[string]error
	SetExists func(name string) bool
}

var _ Tables = (*FakeTables)(nil)

// NewFakeTables returns tables with only the (empty) built-in chains.
func NewFakeTables() *FakeTables {
	t := &FakeTables{Chains: map[Table]map[string][]Rule{}, Fail: map[string]error{}}
	for table, chains := range builtinChains {
		t.Chains[table] = map[string][]Rule{}
		for c := range chains {
			t.Chains[table][c] = nil
		}
	}
	return t
}

func (t *FakeTables) op(text string) error {
	t.Ops = append(t.Ops, text)
	for prefix, err := range t.Fail {
		if strings.HasPrefix(text, prefix) {
			return err
		}
	}
	return nil
}

func (t *FakeTables) ListTable(table Table) (map[string][]Rule, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.op(fmt.Sprintf("-t %s -S", table)); err != nil {
		return nil, err
	}
	out := map[string][]Rule{}
	for name, rules := range t.Chains[table] {
		if OwnsChain(table, name) || builtinChains[table][name] {
			out[name] = slices.Clone(rules)
		}
	}
	return out, nil
}

func (t *FakeTables) ListTables(tables []Table) (map[Table]map[string][]Rule, error) {
	return listEach(t, tables)
}

var builtinTargets = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true, "MARK": true, "MASQUERADE": true, "SET": true,
}

func (t *FakeTables) ReplaceChains(chains []Chain) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var names []string
	for _, c := range chains {
		if err := checkOwnedChain(c.Table, c.Name); err != nil {
			return err
		}
		names = append(names, string(c.Table)+"/"+c.Name)
	}
	if err := t.op("restore " + strings.Join(names, " ")); err != nil {
		return err
	}
	// Validate everything first: a failed restore changes nothing.
	declared := func(table Table, name string) bool {
		if _, ok := t.Chains[table][name]; ok {
			return true
		}
		return slices.ContainsFunc(chains, func(c Chain) bool { return c.Table == table && c.Name == name })
	}
	for _, c := range chains {
		for _, r := range c.Rules {
			for i := 0; i+1 < len(r); i++ {
				switch r[i] {
				case "-j":
					if !builtinTargets[r[i+1]] && !declared(c.Table, r[i+1]) {
						return fmt.Errorf("restore: %s: chain %s does not exist", formatRule(c.Name, r), r[i+1])
					}
				case "--match-set":
					if t.SetExists != nil && !t.SetExists(r[i+1]) {
						return fmt.Errorf("restore: %s: set %s does not exist", formatRule(c.Name, r), r[i+1])
					}
				}
			}
		}
	}
	for _, c := range chains {
		t.Chains[c.Table][c.Name] = slices.Clone(c.Rules)
	}
	return nil
}

func (t *FakeTables) InsertJump(j Jump) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := checkJump(j); err != nil {
		return err
	}
	r := j.Rule()
	if err := t.op(fmt.Sprintf("-t %s -I %s 1 %s", j.Table, j.From, r)); err != nil {
		return err
	}
	if _, ok := t.Chains[j.Table][j.To]; !ok {
		return fmt.Errorf("-I %s: chain %s does not exist", j.From, j.To)
	}
	t.Chains[j.Table][j.From] = append([]Rule{r}, t.Chains[j.Table][j.From]...)
	return nil
}

func (t *FakeTables) DeleteJump(j Jump) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := checkJump(j); err != nil {
		return err
	}
	r := j.Rule()
	if err := t.op(fmt.Sprintf("-t %s -D %s %s", j.Table, j.From, r)); err != nil {
		return err
	}
	rules := t.Chains[j.Table][j.From]
	i := slices.IndexFunc(rules, r.Equal)
	if i < 0 {
		return fmt.Errorf("-D %s: no such rule", j.From)
	}
	t.Chains[j.Table][j.From] = slices.Delete(rules, i, i+1)
	return nil
}

// DeleteChains fails, like the kernel, if a remaining chain still jumps to
// one being deleted; then nothing changes.
func (t *FakeTables) DeleteChains(table Table, chains []string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range chains {
		if err := checkOwnedChain(table, c); err != nil {
			return err
		}
	}
	if err := t.op(fmt.Sprintf("restore -X %s/%s", table, strings.Join(chains, " "))); err != nil {
		return err
	}
	for name, rules := range t.Chains[table] {
		if slices.Contains(chains, name) {
			continue
		}
		for _, r := range rules {
			if i := slices.Index(r, "-j"); i >= 0 && i+1 < len(r) && slices.Contains(chains, r[i+1]) {
				return fmt.Errorf("-X %s: chain is referenced from %s", r[i+1], name)
			}
		}
	}
	for _, c := range chains {
		delete(t.Chains[table], c)
	}
	return nil
}
