// Package sysctl reads and writes integer kernel parameters under
// /proc/sys, and sets the ones the IPVS dataplane needs.
//
// Names use the path form kube-proxy uses, relative to /proc/sys:
// "net/ipv4/vs/conntrack" is what `sysctl net.ipv4.vs.conntrack` shows.
package sysctl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultRoot is where the kernel exposes sysctls.
const DefaultRoot = "/proc/sys"

// Sysctl reads and writes integer sysctls by name.
type Sysctl interface {
	// Get returns the value of the sysctl name.
	Get(name string) (int, error)
	// Set writes v to the sysctl name.
	Set(name string, v int) error
}

// NotFoundError is returned when a sysctl does not exist, which usually
// means the kernel module providing it is not loaded. errors.Is(err,
// fs.ErrNotExist) holds for it.
type NotFoundError struct {
	Name string // e.g. net/ipv4/vs/conntrack
	Path string // e.g. /proc/sys/net/ipv4/vs/conntrack
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("sysctl %s: %s does not exist", e.Name, e.Path)
}

// Is makes errors.Is(err, fs.ErrNotExist) true.
func (e *NotFoundError) Is(target error) bool { return target == fs.ErrNotExist }

// Proc is the real Sysctl, backed by files under Root.
type Proc struct {
	// Root is the sysctl tree; DefaultRoot on a real system, a temp dir in
	// tests, or e.g. /host/proc/sys when the host's /proc is mounted there.
	Root string
}

// New returns a Proc on DefaultRoot.
func New() *Proc { return &Proc{Root: DefaultRoot} }

// NewWithRoot returns a Proc on root.
func NewWithRoot(root string) *Proc { return &Proc{Root: root} }

// Get reads the sysctl name as an integer.
func (p *Proc) Get(name string) (int, error) {
	file, err := p.path(name)
	if err != nil {
		return 0, err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, fileError(name, file, err)
	}
	s := strings.TrimSpace(string(data))
	v, err := strconv.Atoi(s)
	if err != nil {
		// Multi-valued sysctls (e.g. ip_local_port_range) land here.
		return 0, fmt.Errorf("sysctl %s: %s holds %q, not an integer", name, file, s)
	}
	return v, nil
}

// Set writes v to the sysctl name. It never creates the file: a missing
// sysctl is an error, never something to invent.
func (p *Proc) Set(name string, v int) error {
	file, err := p.path(name)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fileError(name, file, err)
	}
	if _, err := f.WriteString(strconv.Itoa(v)); err != nil {
		_ = f.Close() // the write error is the one to report
		return fmt.Errorf("sysctl %s: writing %d to %s: %w", name, v, file, err)
	}
	// procfs applies the value on write, but a regular file (tests, a
	// mounted tree) can still fail at close.
	if err := f.Close(); err != nil {
		return fmt.Errorf("sysctl %s: writing %d to %s: %w", name, v, file, err)
	}
	return nil
}

// KernelRelease returns the running kernel's release (`uname -r`), read
// from kernel/osrelease under Root as kube-proxy does.
func (p *Proc) KernelRelease() (string, error) {
	const name = "kernel/osrelease"
	file, err := p.path(name)
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fileError(name, file, err)
	}
	return strings.TrimSpace(string(data)), nil
}

// path maps name to its file under Root, refusing names that would escape
// the tree.
func (p *Proc) path(name string) (string, error) {
	if err := validateName(name); err != nil {
		return "", err
	}
	root := p.Root
	if root == "" {
		root = DefaultRoot
	}
	return filepath.Join(root, filepath.FromSlash(name)), nil
}

func validateName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || path.Clean(name) != name ||
		name == ".." || strings.HasPrefix(name, "../") {
		return fmt.Errorf("invalid sysctl name %q: want a relative path like net/ipv4/ip_forward", name)
	}
	return nil
}

func fileError(name, file string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return &NotFoundError{Name: name, Path: file}
	}
	return fmt.Errorf("sysctl %s: %w", name, err)
}
