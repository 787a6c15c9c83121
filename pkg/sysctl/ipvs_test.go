package sysctl

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// ipvsLoaded is a kernel with ip_vs and br_netfilter loaded and nothing
// set yet.
func ipvsLoaded() map[string]int {
	return map[string]int{
		VSConnTrack:           0,
		VSConnReuseMode:       1,
		VSExpireNoDestConn:    0,
		VSExpireQuiescentTmpl: 0,
		IPForward:             0,
		ARPIgnore:             0,
		ARPAnnounce:           0,
		BridgeNFCallIPTables:  1,
	}
}

func without(m map[string]int, names ...string) map[string]int {
	for _, n := range names {
		delete(m, n)
	}
	return m
}

func TestEnsureIPVSSysctls(t *testing.T) {
	tests := []struct {
		name    string
		initial map[string]int
		release string // given to the Fake
		opts    IPVSOptions
		failSet string
		// wantSets lists the writes in order; nil with wantErr.
		wantSets []string
		wantErr  string
	}{
		{
			name:    "new kernel leaves conn_reuse_mode",
			initial: ipvsLoaded(),
			opts:    IPVSOptions{KernelRelease: "6.8.0-45-generic"},
			wantSets: []string{
				VSConnTrack + "=1", VSExpireNoDestConn + "=1", VSExpireQuiescentTmpl + "=1", IPForward + "=1",
			},
		},
		{
			name:    "5.9 exactly leaves conn_reuse_mode",
			initial: ipvsLoaded(),
			opts:    IPVSOptions{KernelRelease: "5.9.0"},
			wantSets: []string{
				VSConnTrack + "=1", VSExpireNoDestConn + "=1", VSExpireQuiescentTmpl + "=1", IPForward + "=1",
			},
		},
		{
			name:    "kernel 4.19 sets conn_reuse_mode=0",
			initial: ipvsLoaded(),
			opts:    IPVSOptions{KernelRelease: "4.19.112+"},
			wantSets: []string{
				VSConnTrack + "=1", VSConnReuseMode + "=0", VSExpireNoDestConn + "=1", VSExpireQuiescentTmpl + "=1", IPForward + "=1",
			},
		},
		{
			name:    "kernel 3.10 cannot set conn_reuse_mode and goes on",
			initial: without(ipvsLoaded(), VSConnReuseMode),
			opts:    IPVSOptions{KernelRelease: "3.10.0-1160.el7.x86_64"},
			wantSets: []string{
				VSConnTrack + "=1", VSExpireNoDestConn + "=1", VSExpireQuiescentTmpl + "=1", IPForward + "=1",
			},
		},
		{
			name:    "kernel release read from the Sysctl",
			initial: ipvsLoaded(),
			release: "5.4.0-150-generic",
			wantSets: []string{
				VSConnTrack + "=1", VSConnReuseMode + "=0", VSExpireNoDestConn + "=1", VSExpireQuiescentTmpl + "=1", IPForward + "=1",
			},
		},
		{
			name:    "strict ARP",
			initial: ipvsLoaded(),
			opts:    IPVSOptions{KernelRelease: "6.1.0", StrictARP: true},
			wantSets: []string{
				VSConnTrack + "=1", VSExpireNoDestConn + "=1", VSExpireQuiescentTmpl + "=1", IPForward + "=1",
				ARPIgnore + "=1", ARPAnnounce + "=2",
			},
		},
		{
			name: "already right writes nothing",
			initial: map[string]int{
				VSConnTrack: 1, VSConnReuseMode: 0, VSExpireNoDestConn: 1, VSExpireQuiescentTmpl: 1,
				IPForward: 1, ARPIgnore: 1, ARPAnnounce: 2,
			},
			opts:     IPVSOptions{KernelRelease: "5.4.0", StrictARP: true},
			wantSets: []string{},
		},
		{
			name:     "bridge sysctl off is only logged",
			initial:  func() map[string]int { m := ipvsLoaded(); m[BridgeNFCallIPTables] = 0; return m }(),
			opts:     IPVSOptions{KernelRelease: "6.1.0"},
			wantSets: []string{VSConnTrack + "=1", VSExpireNoDestConn + "=1", VSExpireQuiescentTmpl + "=1", IPForward + "=1"},
		},
		{
			name:     "bridge sysctl absent is fine",
			initial:  without(ipvsLoaded(), BridgeNFCallIPTables),
			opts:     IPVSOptions{KernelRelease: "6.1.0"},
			wantSets: []string{VSConnTrack + "=1", VSExpireNoDestConn + "=1", VSExpireQuiescentTmpl + "=1", IPForward + "=1"},
		},
		{
			name:    "ip_vs not loaded",
			initial: map[string]int{IPForward: 1},
			opts:    IPVSOptions{KernelRelease: "6.1.0"},
			wantErr: "/proc/sys/net/ipv4/vs/conntrack does not exist (is the ip_vs kernel module loaded?",
		},
		{
			name:    "arp sysctl missing with strict ARP",
			initial: without(ipvsLoaded(), ARPAnnounce),
			opts:    IPVSOptions{KernelRelease: "6.1.0", StrictARP: true},
			wantErr: "net/ipv4/conf/all/arp_announce does not exist",
		},
		{
			name:    "arp sysctls missing without strict ARP are not needed",
			initial: without(ipvsLoaded(), ARPIgnore, ARPAnnounce),
			opts:    IPVSOptions{KernelRelease: "6.1.0"},
			wantSets: []string{
				VSConnTrack + "=1", VSExpireNoDestConn + "=1", VSExpireQuiescentTmpl + "=1", IPForward + "=1",
			},
		},
		{
			name:    "write failure names the sysctl",
			initial: ipvsLoaded(),
			opts:    IPVSOptions{KernelRelease: "6.1.0"},
			failSet: IPForward,
			wantErr: "can't set sysctl net/ipv4/ip_forward to 1",
		},
		{
			name:    "unknown kernel release",
			initial: ipvsLoaded(),
			wantErr: "kernel/osrelease does not exist",
		},
		{
			name:    "unparseable kernel release",
			initial: ipvsLoaded(),
			opts:    IPVSOptions{KernelRelease: "linux"},
			wantErr: `kernel release "linux"`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake(tc.initial, tc.release)
			if tc.failSet != "" {
				f.FailSet(tc.failSet, errors.New("read-only file system"))
			}
			err := EnsureIPVSSysctls(f, tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("EnsureIPVSSysctls: %v", err)
			}
			got := f.Sets()
			if got == nil {
				got = []string{}
			}
			if !reflect.DeepEqual(got, tc.wantSets) {
				t.Errorf("writes:\n got %v\nwant %v", got, tc.wantSets)
			}
			// The bridge sysctl is never written.
			if v, ok := tc.initial[BridgeNFCallIPTables]; ok && f.Values()[BridgeNFCallIPTables] != v {
				t.Errorf("bridge-nf-call-iptables changed to %d", f.Values()[BridgeNFCallIPTables])
			}
		})
	}
}

// TestEnsureIPVSSysctlsProcTree runs the real implementation on a temp
// /proc/sys.
func TestEnsureIPVSSysctlsProcTree(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{"kernel/osrelease": "5.4.0-150-generic\n"}
	for name, v := range ipvsLoaded() {
		files[name] = strconv.Itoa(v) + "\n"
	}
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := NewWithRoot(root)
	if err := EnsureIPVSSysctls(p, IPVSOptions{StrictARP: true}); err != nil {
		t.Fatalf("EnsureIPVSSysctls: %v", err)
	}
	want := map[string]int{
		VSConnTrack: 1, VSConnReuseMode: 0, VSExpireNoDestConn: 1, VSExpireQuiescentTmpl: 1,
		IPForward: 1, ARPIgnore: 1, ARPAnnounce: 2, BridgeNFCallIPTables: 1,
	}
	for name, w := range want {
		if got, err := p.Get(name); err != nil || got != w {
			t.Errorf("%s = %d, %v; want %d", name, got, err, w)
		}
	}

	// Unload ip_vs: a clear error naming the file, no panic.
	if err := os.RemoveAll(filepath.Join(root, "net/ipv4/vs")); err != nil {
		t.Fatal(err)
	}
	err := EnsureIPVSSysctls(p, IPVSOptions{})
	wantMsg := filepath.Join(root, "net/ipv4/vs/conntrack") + " does not exist"
	if err == nil || !strings.Contains(err.Error(), wantMsg) {
		t.Errorf("without ip_vs: error = %v, want containing %q", err, wantMsg)
	}
}

func TestEnsureIPVSSysctlsNil(t *testing.T) {
	if err := EnsureIPVSSysctls(nil, IPVSOptions{}); err == nil {
		t.Error("nil Sysctl: want error")
	}
}

// noRelease is a Sysctl that cannot tell the kernel release.
type noRelease struct{ Sysctl }

func TestEnsureIPVSSysctlsNeedsRelease(t *testing.T) {
	err := EnsureIPVSSysctls(noRelease{NewFake(ipvsLoaded(), "6.1.0")}, IPVSOptions{})
	if err == nil || !strings.Contains(err.Error(), "KernelRelease") {
		t.Errorf("error = %v, want a request for KernelRelease", err)
	}
}

func TestParseKernelVersion(t *testing.T) {
	tests := []struct {
		release string
		want    KernelVersion
		wantErr bool
	}{
		{release: "5.15.0-91-generic", want: KernelVersion{5, 15}},
		{release: "6.1.55+", want: KernelVersion{6, 1}},
		{release: "4.19.112+", want: KernelVersion{4, 19}},
		{release: "5.10", want: KernelVersion{5, 10}},
		{release: "6.9-rc1", want: KernelVersion{6, 9}},
		{release: " 3.10.0-1160.el7.x86_64\n", want: KernelVersion{3, 10}},
		{release: "", wantErr: true},
		{release: "6", wantErr: true},
		{release: "x.1", wantErr: true},
		{release: "6.x", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.release, func(t *testing.T) {
			got, err := ParseKernelVersion(tc.release)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseKernelVersion(%q) error = %v, wantErr %v", tc.release, err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("ParseKernelVersion(%q) = %v, want %v", tc.release, got, tc.want)
			}
		})
	}
}

func TestKernelVersionLess(t *testing.T) {
	tests := []struct {
		a, b KernelVersion
		want bool
	}{
		{KernelVersion{4, 19}, KernelVersion{5, 9}, true},
		{KernelVersion{5, 8}, KernelVersion{5, 9}, true},
		{KernelVersion{5, 9}, KernelVersion{5, 9}, false},
		{KernelVersion{5, 10}, KernelVersion{5, 9}, false},
		{KernelVersion{6, 0}, KernelVersion{5, 9}, false},
	}
	for _, tc := range tests {
		if got := tc.a.Less(tc.b); got != tc.want {
			t.Errorf("%v.Less(%v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
