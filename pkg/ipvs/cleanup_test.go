package ipvs

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestCleanup(t *testing.T) {
	// The kernel as a proxy run leaves it, plus other programs' servers.
	setup := func(ipvs *FakeIPVS, links *FakeLinks) {
		links.SetAddresses(ip("10.96.0.1"), ip("10.96.0.2"), ip("10.96.5.5"), ip("fd00::1"))
		for _, v := range []*VirtualServer{
			vs("10.96.0.1:80/TCP", "10.244.1.1:80"),
			vs("10.96.0.2:53/UDP", "10.244.1.2:53"),
			vs("[fd00::1]:80/TCP", "[fd00:244::1]:80"),
			vs("10.96.5.5:80/TCP", "10.244.1.3:80"),       // ours unless excluded
			vs("192.168.1.10:30080/TCP", "10.244.1.1:80"), // NodePort
			vs("192.168.1.10:32767/SCTP", "10.244.1.1:80"),
			vs("192.168.1.10:8080/TCP", "10.1.0.1:80"), // another program's, on a node address
			vs("192.168.50.1:80/TCP", "10.1.0.1:80"),   // another program's (keepalived)
		} {
			ipvs.Put(v)
		}
	}
	foreign := []string{"192.168.1.10:8080/TCP", "192.168.50.1:80/TCP"}
	nodeAddrs := ips("192.168.1.10", "fd00:1::10")
	excluded := func(a netip.Addr) bool { return netip.MustParsePrefix("10.96.5.0/24").Contains(a) }

	for _, tc := range []struct {
		name    string
		opts    CleanupOptions
		prepare func(*FakeIPVS, *FakeLinks)
		nilIPVS bool
		wantErr string
		ops     []string
		left    []string // virtual servers left, besides the foreign ones
		addrs   []string // addresses left on kube-ipvs0 (nil: no link)
	}{
		{
			name: "everything ours",
			opts: CleanupOptions{NodePortAddresses: nodeAddrs},
			ops: []string{
				"ipvsadm -D -t 10.96.0.1:80",
				"ipvsadm -D -u 10.96.0.2:53",
				"ipvsadm -D -t 10.96.5.5:80",
				"ipvsadm -D -t 192.168.1.10:30080",
				"ipvsadm -D --sctp-service 192.168.1.10:32767",
				"ipvsadm -D -t [fd00::1]:80",
				"ip link del kube-ipvs0",
			},
		},
		{
			name: "excluded address on the link: link kept, other addresses unbound",
			opts: CleanupOptions{NodePortAddresses: nodeAddrs, Excluded: excluded},
			ops: []string{
				"ipvsadm -D -t 10.96.0.1:80",
				"ipvsadm -D -u 10.96.0.2:53",
				"ipvsadm -D -t 192.168.1.10:30080",
				"ipvsadm -D --sctp-service 192.168.1.10:32767",
				"ipvsadm -D -t [fd00::1]:80",
				"ip addr del 10.96.0.1/32 dev kube-ipvs0",
				"ip addr del 10.96.0.2/32 dev kube-ipvs0",
				"ip addr del fd00::1/128 dev kube-ipvs0",
			},
			left:  []string{"10.96.5.5:80/TCP"},
			addrs: []string{"10.96.5.5"},
		},
		{
			name: "excluded node address",
			opts: CleanupOptions{NodePortAddresses: nodeAddrs, Excluded: func(a netip.Addr) bool { return a == ip("192.168.1.10") }},
			ops: []string{
				"ipvsadm -D -t 10.96.0.1:80",
				"ipvsadm -D -u 10.96.0.2:53",
				"ipvsadm -D -t 10.96.5.5:80",
				"ipvsadm -D -t [fd00::1]:80",
				"ip link del kube-ipvs0",
			},
			left: []string{"192.168.1.10:30080/TCP", "192.168.1.10:32767/SCTP"},
		},
		{
			name: "other NodePort range",
			opts: CleanupOptions{NodePortAddresses: nodeAddrs, NodePortRange: PortRange{30000, 30100}},
			ops: []string{
				"ipvsadm -D -t 10.96.0.1:80",
				"ipvsadm -D -u 10.96.0.2:53",
				"ipvsadm -D -t 10.96.5.5:80",
				"ipvsadm -D -t 192.168.1.10:30080",
				"ipvsadm -D -t [fd00::1]:80",
				"ip link del kube-ipvs0",
			},
			left: []string{"192.168.1.10:32767/SCTP"},
		},
		{
			name: "no node addresses: NodePorts left",
			ops: []string{
				"ipvsadm -D -t 10.96.0.1:80",
				"ipvsadm -D -u 10.96.0.2:53",
				"ipvsadm -D -t 10.96.5.5:80",
				"ipvsadm -D -t [fd00::1]:80",
				"ip link del kube-ipvs0",
			},
			left: []string{"192.168.1.10:30080/TCP", "192.168.1.10:32767/SCTP"},
		},
		{
			name:    "no link",
			opts:    CleanupOptions{NodePortAddresses: nodeAddrs},
			prepare: func(_ *FakeIPVS, l *FakeLinks) { _ = l.DeleteLink(); l.Log().Reset() },
			ops: []string{
				"ipvsadm -D -t 192.168.1.10:30080",
				"ipvsadm -D --sctp-service 192.168.1.10:32767",
			},
			left: []string{"10.96.0.1:80/TCP", "10.96.0.2:53/UDP", "10.96.5.5:80/TCP", "[fd00::1]:80/TCP"},
		},
		{
			name:    "a failed deletion keeps the link for the next try",
			opts:    CleanupOptions{NodePortAddresses: nodeAddrs},
			prepare: func(f *FakeIPVS, _ *FakeLinks) { f.FailOn("ipvsadm -D -u 10.96.0.2:53", errBoom) },
			wantErr: "ipvsadm -D -u 10.96.0.2:53: boom",
			ops: []string{
				"ipvsadm -D -t 10.96.0.1:80",
				"ipvsadm -D -u 10.96.0.2:53 # failed: boom",
				"ipvsadm -D -t 10.96.5.5:80",
				"ipvsadm -D -t 192.168.1.10:30080",
				"ipvsadm -D --sctp-service 192.168.1.10:32767",
				"ipvsadm -D -t [fd00::1]:80",
			},
			left:  []string{"10.96.0.2:53/UDP"},
			addrs: []string{"10.96.0.1", "10.96.0.2", "10.96.5.5", "fd00::1"},
		},
		{
			name:    "unreadable table: nothing removed",
			opts:    CleanupOptions{NodePortAddresses: nodeAddrs},
			prepare: func(f *FakeIPVS, _ *FakeLinks) { f.FailOn(FakeListServicesCmd, errBoom) },
			wantErr: "list IPVS services: boom",
			left:    []string{"10.96.0.1:80/TCP", "10.96.0.2:53/UDP", "10.96.5.5:80/TCP", "[fd00::1]:80/TCP", "192.168.1.10:30080/TCP", "192.168.1.10:32767/SCTP"},
			addrs:   []string{"10.96.0.1", "10.96.0.2", "10.96.5.5", "fd00::1"},
		},
		{
			name:    "failed link deletion",
			opts:    CleanupOptions{},
			prepare: func(_ *FakeIPVS, l *FakeLinks) { l.FailOn(FakeDeleteLinkCmd, errBoom) },
			wantErr: "ip link del kube-ipvs0: boom",
			ops: []string{
				"ipvsadm -D -t 10.96.0.1:80",
				"ipvsadm -D -u 10.96.0.2:53",
				"ipvsadm -D -t 10.96.5.5:80",
				"ipvsadm -D -t [fd00::1]:80",
				"ip link del kube-ipvs0 # failed: boom",
			},
			left:  []string{"192.168.1.10:30080/TCP", "192.168.1.10:32767/SCTP"},
			addrs: []string{"10.96.0.1", "10.96.0.2", "10.96.5.5", "fd00::1"},
		},
		{
			name:    "no IPVS: only the link",
			opts:    CleanupOptions{NodePortAddresses: nodeAddrs},
			nilIPVS: true,
			ops:     []string{"ip link del kube-ipvs0"},
			left:    []string{"10.96.0.1:80/TCP", "10.96.0.2:53/UDP", "10.96.5.5:80/TCP", "[fd00::1]:80/TCP", "192.168.1.10:30080/TCP", "192.168.1.10:32767/SCTP"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := &FakeLog{}
			fi, fl := NewFakeIPVS(log), NewFakeLinks(log)
			setup(fi, fl)
			if tc.prepare != nil {
				tc.prepare(fi, fl)
			}
			var ipvs IPVS = fi
			if tc.nilIPVS {
				ipvs = nil
			}
			err := Cleanup(ipvs, fl, tc.opts)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Cleanup: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, errBoom)):
				t.Fatalf("Cleanup error = %v, want %q", err, tc.wantErr)
			}
			if got := log.Lines(); !slices.Equal(got, tc.ops) {
				t.Errorf("ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.ops, "\n"))
			}
			fi.FailOn(FakeListServicesCmd, nil)
			vss, _ := fi.Services()
			var left []string
			for _, v := range vss {
				left = append(left, v.Key.String())
			}
			want := append(slices.Clone(foreign), tc.left...)
			for i, k := range want {
				want[i] = vs(k).Key.String()
			}
			slices.Sort(left)
			slices.Sort(want)
			if !slices.Equal(left, want) {
				t.Errorf("left:\n%s\nwant:\n%s", strings.Join(left, "\n"), strings.Join(want, "\n"))
			}
			addrs, err := fl.Addresses()
			if tc.addrs == nil {
				if fl.Exists() {
					t.Errorf("link still there, with %v", addrs)
				}
			} else if got := (&State{Addresses: addrs}).Dump(); got != (&State{Addresses: ips(tc.addrs...)}).Dump() || err != nil {
				t.Errorf("addresses left: %v (%v), want %v", addrs, err, tc.addrs)
			}
		})
	}
}

// A second Cleanup finds nothing to do.
func TestCleanupTwice(t *testing.T) {
	log := &FakeLog{}
	fi, fl := NewFakeIPVS(log), NewFakeLinks(log)
	fl.SetAddresses(ip("10.96.0.1"))
	fi.Put(vs("10.96.0.1:80/TCP"))
	for range 2 {
		if err := Cleanup(fi, fl, CleanupOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"ipvsadm -D -t 10.96.0.1:80", "ip link del kube-ipvs0"}
	if got := log.Lines(); !slices.Equal(got, want) {
		t.Errorf("ops %q, want %q", got, want)
	}
}

func TestPortRange(t *testing.T) {
	r := DefaultNodePortRange
	for p, want := range map[uint16]bool{29999: false, 30000: true, 31000: true, 32767: true, 32768: false} {
		if r.Contains(p) != want {
			t.Errorf("%s contains %d: %v", r, p, !want)
		}
	}
}
