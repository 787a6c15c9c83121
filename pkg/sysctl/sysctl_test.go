package sysctl

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTree creates files under a temp root; a value of "" makes a
// directory instead.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if content == "" {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestProcGet(t *testing.T) {
	root := writeTree(t, map[string]string{
		"net/ipv4/ip_forward":           "1\n",
		"net/ipv4/vs/conntrack":         "0",
		"net/ipv4/ip_local_port_range":  "32768\t60999\n",
		"net/ipv4/conf/all/arp_ignore/": "", // a directory, not a value
	})
	p := NewWithRoot(root)
	tests := []struct {
		name        string
		sysctl      string
		want        int
		wantErr     string
		wantMissing bool
	}{
		{name: "trailing newline", sysctl: "net/ipv4/ip_forward", want: 1},
		{name: "no newline", sysctl: "net/ipv4/vs/conntrack", want: 0},
		{name: "missing names the file", sysctl: "net/ipv4/vs/expire_nodest_conn", wantMissing: true,
			wantErr: filepath.Join(root, "net/ipv4/vs/expire_nodest_conn") + " does not exist"},
		{name: "not an integer", sysctl: "net/ipv4/ip_local_port_range", wantErr: "not an integer"},
		{name: "directory", sysctl: "net/ipv4/conf/all/arp_ignore", wantErr: "net/ipv4/conf/all/arp_ignore"},
		{name: "empty name", sysctl: "", wantErr: "invalid sysctl name"},
		{name: "absolute name", sysctl: "/etc/passwd", wantErr: "invalid sysctl name"},
		{name: "escaping name", sysctl: "../../etc/passwd", wantErr: "invalid sysctl name"},
		{name: "unclean name", sysctl: "net/ipv4/../ipv4/ip_forward", wantErr: "invalid sysctl name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Get(tc.sysctl)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Get(%q) error = %v, want containing %q", tc.sysctl, err, tc.wantErr)
				}
				if errors.Is(err, fs.ErrNotExist) != tc.wantMissing {
					t.Errorf("errors.Is(err, fs.ErrNotExist) = %v, want %v", !tc.wantMissing, tc.wantMissing)
				}
				return
			}
			if err != nil {
				t.Fatalf("Get(%q): %v", tc.sysctl, err)
			}
			if got != tc.want {
				t.Errorf("Get(%q) = %d, want %d", tc.sysctl, got, tc.want)
			}
		})
	}
}

func TestProcSet(t *testing.T) {
	tests := []struct {
		name    string
		sysctl  string
		value   int
		wantErr string
	}{
		{name: "overwrites", sysctl: "net/ipv4/ip_forward", value: 1},
		{name: "shorter value truncates", sysctl: "net/ipv4/vs/conn_reuse_mode", value: 0},
		{name: "negative", sysctl: "net/ipv4/ip_forward", value: -1},
		{name: "missing is not created", sysctl: "net/ipv4/vs/conntrack", value: 1, wantErr: "net/ipv4/vs/conntrack does not exist"},
		{name: "bad name", sysctl: "../x", value: 1, wantErr: "invalid sysctl name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := writeTree(t, map[string]string{
				"net/ipv4/ip_forward":         "0\n",
				"net/ipv4/vs/conn_reuse_mode": "100\n",
			})
			p := NewWithRoot(root)
			err := p.Set(tc.sysctl, tc.value)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Set error = %v, want containing %q", err, tc.wantErr)
				}
				if _, statErr := os.Stat(filepath.Join(root, "net/ipv4/vs/conntrack")); !errors.Is(statErr, fs.ErrNotExist) {
					t.Errorf("Set created a file: stat error %v", statErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Set: %v", err)
			}
			got, err := p.Get(tc.sysctl)
			if err != nil || got != tc.value {
				t.Errorf("after Set(%d), Get = %d, %v", tc.value, got, err)
			}
		})
	}
}

func TestProcKernelRelease(t *testing.T) {
	root := writeTree(t, map[string]string{"kernel/osrelease": "6.8.0-45-generic\n"})
	got, err := NewWithRoot(root).KernelRelease()
	if err != nil || got != "6.8.0-45-generic" {
		t.Errorf("KernelRelease = %q, %v", got, err)
	}
	if _, err := NewWithRoot(t.TempDir()).KernelRelease(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("KernelRelease on empty root: error %v, want not-exist", err)
	}
}

func TestDefaultRoot(t *testing.T) {
	p := &Proc{}
	file, err := p.path("net/ipv4/ip_forward")
	if err != nil || file != "/proc/sys/net/ipv4/ip_forward" {
		t.Errorf("path = %q, %v", file, err)
	}
	if New().Root != DefaultRoot {
		t.Errorf("New().Root = %q", New().Root)
	}
}

func TestFake(t *testing.T) {
	f := NewFake(map[string]int{"a/b": 1}, "")
	if v, err := f.Get("a/b"); err != nil || v != 1 {
		t.Errorf("Get = %d, %v", v, err)
	}
	if err := f.Set("a/b", 2); err != nil {
		t.Errorf("Set: %v", err)
	}
	if err := f.Set("a/c", 2); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "/proc/sys/a/c") {
		t.Errorf("Set missing: %v", err)
	}
	f.FailSet("a/b", errors.New("read-only file system"))
	if err := f.Set("a/b", 3); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("Set after FailSet: %v", err)
	}
	if got := f.Values()["a/b"]; got != 2 {
		t.Errorf("value = %d, want 2", got)
	}
	if got := f.Sets(); len(got) != 1 || got[0] != "a/b=2" {
		t.Errorf("Sets = %v", got)
	}
	if _, err := f.KernelRelease(); err == nil {
		t.Error("KernelRelease with no release: want error")
	}
}

// TestRealProc reads the running kernel's tree, read-only.
func TestRealProc(t *testing.T) {
	p := New()
	release, err := p.KernelRelease()
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("no /proc/sys here")
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseKernelVersion(release); err != nil {
		t.Errorf("running kernel %q: %v", release, err)
	}
	if v, err := p.Get("net/ipv4/ip_forward"); err != nil || (v != 0 && v != 1) {
		t.Errorf("ip_forward = %d, %v", v, err)
	}
}
