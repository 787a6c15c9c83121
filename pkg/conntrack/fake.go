package conntrack

import (
	"slices"
	"sync"
)

// Fake is a Cleaner over an in-memory table, recording every call. It
// applies filters exactly as the netlink Cleaner does. Safe for concurrent
// use.
type Fake struct {
	mu      sync.Mutex
	entries []Entry
	calls   [][]Filter
	err     error
}

var _ Cleaner = (*Fake)(nil)

// NewFake returns a Fake whose table holds entries.
func NewFake(entries ...Entry) *Fake {
	return &Fake{entries: slices.Clone(entries)}
}

// DeleteStale records filters and, unless SetError set an error, deletes
// the matching entries from the table.
func (f *Fake) DeleteStale(filters []Filter) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(filters) == 0 {
		return 0, nil
	}
	f.calls = append(f.calls, slices.Clone(filters))
	if f.err != nil {
		return 0, f.err
	}
	m := compile(filters)
	before := len(f.entries)
	f.entries = slices.DeleteFunc(f.entries, m.match)
	return before - len(f.entries), nil
}

// SetError makes the next calls fail with err (nil: succeed again).
func (f *Fake) SetError(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// Calls returns the filters of every call that had some, oldest first.
func (f *Fake) Calls() [][]Filter {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Entries returns the table.
func (f *Fake) Entries() []Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries)
}
