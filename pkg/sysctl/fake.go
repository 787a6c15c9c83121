package sysctl

import (
	"fmt"
	"maps"
	"path/filepath"
	"sync"
)

// Fake is an in-memory Sysctl for tests. Only sysctls it was given exist,
// so a test can model a kernel without ip_vs loaded by leaving them out.
// It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	values  map[string]int
	release string
	// setErr holds errors Set returns per name (see FailSet).
	setErr map[string]error
	sets   []string
}

var _ Sysctl = (*Fake)(nil)

// NewFake returns a Fake holding a copy of values, on a kernel reporting
// release (`uname -r`; may be empty).
func NewFake(values map[string]int, release string) *Fake {
	return &Fake{values: maps.Clone(values), release: release, setErr: map[string]error{}}
}

// Get returns the value of name, or a *NotFoundError.
func (f *Fake) Get(name string) (int, error) {
	if err := validateName(name); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[name]
	if !ok {
		return 0, f.notFound(name)
	}
	return v, nil
}

// Set changes name to v; like the kernel, it does not create sysctls.
func (f *Fake) Set(name string, v int) error {
	if err := validateName(name); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.setErr[name]; err != nil {
		return fmt.Errorf("sysctl %s: %w", name, err)
	}
	if _, ok := f.values[name]; !ok {
		return f.notFound(name)
	}
	f.values[name] = v
	f.sets = append(f.sets, fmt.Sprintf("%s=%d", name, v))
	return nil
}

// FailSet makes later Sets of name fail with err.
func (f *Fake) FailSet(name string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setErr[name] = err
}

// KernelRelease returns the release given to NewFake.
func (f *Fake) KernelRelease() (string, error) {
	if f.release == "" {
		return "", f.notFound("kernel/osrelease")
	}
	return f.release, nil
}

// Values returns a copy of all sysctls.
func (f *Fake) Values() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.values)
}

// Sets returns the successful Set calls in order, as "name=value".
func (f *Fake) Sets() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.sets...)
}

func (f *Fake) notFound(name string) error {
	return &NotFoundError{Name: name, Path: filepath.Join(DefaultRoot, filepath.FromSlash(name))}
}
