package ipvs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// vs builds a virtual server from "10.96.0.10:80/TCP" and real servers
// given as "10.244.1.2:8080" (weight 1) or "10.244.1.2:8080=5".
func vs(k string, rss ...string) *VirtualServer {
	addrPort, proto, _ := strings.Cut(k, "/")
	ap := netip.MustParseAddrPort(addrPort)
	p := map[string]Proto{"TCP": ProtoTCP, "UDP": ProtoUDP, "SCTP": ProtoSCTP}[proto]
	v := &VirtualServer{Key: VSKey{Addr: ap.Addr(), Port: ap.Port(), Proto: p}, Scheduler: "rr", Bind: true}
	for _, r := range rss {
		a, w, _ := strings.Cut(r, "=")
		rap := netip.MustParseAddrPort(a)
		weight := 1
		if w != "" {
			weight = int(w[0] - '0')
		}
		v.RealServers = append(v.RealServers, RealServer{Key: RSKey{Addr: rap.Addr(), Port: rap.Port()}, Weight: weight})
	}
	return v
}

func state(addrs []string, vss ...*VirtualServer) *State {
	st := &State{VirtualServers: map[VSKey]*VirtualServer{}}
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, ip(a))
	}
	for _, v := range vss {
		st.VirtualServers[v.Key] = v
	}
	return st
}

func with(v *VirtualServer, f func(*VirtualServer)) *VirtualServer {
	f(v)
	return v
}

func opStrings(ops []Op) []string {
	var out []string
	for _, op := range ops {
		out = append(out, op.String())
	}
	return out
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name      string
		have, got *State
		want      []string
	}{{
		name: "both empty",
		have: state(nil), got: state(nil),
	}, {
		name: "nil states",
	}, {
		name: "equal",
		have: state([]string{"10.96.0.10"}, vs("10.96.0.10:80/TCP", "10.244.1.2:8080")),
		got:  state([]string{"10.96.0.10"}, vs("10.96.0.10:80/TCP", "10.244.1.2:8080")),
	}, {
		name: "create from scratch: address, then services, then destinations",
		have: state(nil),
		got: state([]string{"10.96.0.10", "fd00::10"},
			vs("10.96.0.10:80/TCP", "10.244.1.3:8080", "10.244.1.2:8080"),
			vs("[fd00::10]:53/UDP", "[fd00:244::5]:53"),
			vs("10.96.0.10:53/SCTP")),
		want: []string{
			"ip addr add 10.96.0.10/32 dev kube-ipvs0",
			"ip addr add fd00::10/128 dev kube-ipvs0",
			"ipvsadm -A --sctp-service 10.96.0.10:53 -s rr",
			"ipvsadm -A -t 10.96.0.10:80 -s rr",
			"ipvsadm -A -u [fd00::10]:53 -s rr",
			"ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.2:8080 -m -w 1",
			"ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.3:8080 -m -w 1",
			"ipvsadm -a -u [fd00::10]:53 -r [fd00:244::5]:53 -m -w 1",
		},
	}, {
		name: "remove everything: services (with their destinations), then addresses",
		have: state([]string{"10.96.0.10"}, vs("10.96.0.10:80/TCP", "10.244.1.2:8080")),
		got:  state(nil),
		want: []string{
			"ipvsadm -D -t 10.96.0.10:80",
			"ip addr del 10.96.0.10/32 dev kube-ipvs0",
		},
	}, {
		name: "scheduler change",
		have: state(nil, vs("10.96.0.10:80/TCP")),
		got:  state(nil, with(vs("10.96.0.10:80/TCP"), func(v *VirtualServer) { v.Scheduler = "lc" })),
		want: []string{"ipvsadm -E -t 10.96.0.10:80 -s lc"},
	}, {
		name: "affinity on, then timeout change",
		have: state(nil, vs("10.96.0.10:80/TCP"), with(vs("10.96.0.11:80/TCP"), func(v *VirtualServer) { v.Flags, v.Timeout = FlagPersistent, 60 })),
		got: state(nil,
			with(vs("10.96.0.10:80/TCP"), func(v *VirtualServer) { v.Flags, v.Timeout = FlagPersistent, 10800 }),
			with(vs("10.96.0.11:80/TCP"), func(v *VirtualServer) { v.Flags, v.Timeout = FlagPersistent, 120 })),
		want: []string{
			"ipvsadm -E -t 10.96.0.10:80 -s rr -p 10800",
			"ipvsadm -E -t 10.96.0.11:80 -s rr -p 120",
		},
	}, {
		name: "planner-only fields do not count",
		have: state(nil, with(vs("10.96.0.10:80/TCP"), func(v *VirtualServer) { v.Bind, v.Kind = false, KindUnknown })),
		got:  state(nil, with(vs("10.96.0.10:80/TCP"), func(v *VirtualServer) { v.Kind, v.Service.Name, v.PortName = KindClusterIP, "web", "http" })),
	}, {
		name: "destinations: add, weight update, delete",
		have: state(nil, vs("10.96.0.10:80/TCP", "10.244.1.1:80", "10.244.1.2:80", "10.244.1.3:80=0")),
		got:  state(nil, vs("10.96.0.10:80/TCP", "10.244.1.2:80", "10.244.1.3:80", "10.244.1.4:80")),
		want: []string{
			"ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.4:80 -m -w 1",
			"ipvsadm -e -t 10.96.0.10:80 -r 10.244.1.3:80 -m -w 1",
			"ipvsadm -d -t 10.96.0.10:80 -r 10.244.1.1:80",
		},
	}, {
		name: "forwarding method change",
		have: state(nil, with(vs("10.96.0.10:80/TCP", "10.244.1.1:80"), func(v *VirtualServer) { v.RealServers[0].Forward = ForwardRoute })),
		got:  state(nil, vs("10.96.0.10:80/TCP", "10.244.1.1:80")),
		want: []string{"ipvsadm -e -t 10.96.0.10:80 -r 10.244.1.1:80 -m -w 1"},
	}, {
		name: "service replaced by another: adds first",
		have: state([]string{"10.96.0.10"}, vs("10.96.0.10:80/TCP", "10.244.1.1:80")),
		got:  state([]string{"10.96.0.11"}, vs("10.96.0.11:80/TCP", "10.244.1.1:80")),
		want: []string{
			"ip addr add 10.96.0.11/32 dev kube-ipvs0",
			"ipvsadm -A -t 10.96.0.11:80 -s rr",
			"ipvsadm -a -t 10.96.0.11:80 -r 10.244.1.1:80 -m -w 1",
			"ipvsadm -D -t 10.96.0.10:80",
			"ip addr del 10.96.0.10/32 dev kube-ipvs0",
		},
	}, {
		name: "unsorted and duplicated inputs",
		have: state([]string{"10.96.0.12", "10.96.0.10", "10.96.0.10"},
			&VirtualServer{Key: vs("10.96.0.10:80/TCP").Key, Scheduler: "rr", RealServers: []RealServer{
				{Key: RSKey{ip("10.244.1.3"), 80}, Weight: 1}, {Key: RSKey{ip("10.244.1.1"), 80}, Weight: 1},
			}}),
		got: state([]string{"10.96.0.11", "10.96.0.10", "10.96.0.11"}, vs("10.96.0.10:80/TCP", "10.244.1.1:80", "10.244.1.3:80")),
		want: []string{
			"ip addr add 10.96.0.11/32 dev kube-ipvs0",
			"ip addr del 10.96.0.12/32 dev kube-ipvs0",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := opStrings(Diff(tt.have, tt.got))
			if !slices.Equal(got, tt.want) {
				t.Errorf("Diff:\n got  %q\n want %q", got, tt.want)
			}
		})
	}
}

// TestDiffConverges applies each diff to its observed state through the fake
// and checks the result is the desired state.
func TestDiffConverges(t *testing.T) {
	have := state([]string{"10.96.0.10", "10.96.0.12"},
		vs("10.96.0.10:80/TCP", "10.244.1.1:80", "10.244.1.2:80=3"),
		vs("10.96.0.12:53/UDP", "10.244.1.1:53"))
	want := state([]string{"10.96.0.10", "10.96.0.11"},
		with(vs("10.96.0.10:80/TCP", "10.244.1.2:80", "10.244.1.5:80"), func(v *VirtualServer) { v.Flags, v.Timeout = FlagPersistent, 30 }),
		vs("10.96.0.11:80/TCP", "10.244.1.1:80"))

	fi, fl := NewFakeIPVS(nil), NewFakeLinks(nil)
	fl.SetAddresses(have.Addresses...)
	for _, v := range have.VirtualServers {
		fi.Put(v)
	}
	a := NewApplier(fi, fl)
	for _, op := range Diff(have, want) {
		if err := a.do(op); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
	}
	got, err := ReadKernel(fi, fl)
	if err != nil {
		t.Fatal(err)
	}
	if got.Dump() != want.Dump() {
		t.Errorf("kernel after diff:\n%s\nwant:\n%s", got.Dump(), want.Dump())
	}
}

func TestOpString(t *testing.T) {
	v := with(vs("[fd00::10]:443/TCP", "[fd00::1]:8443"), func(v *VirtualServer) {
		v.Scheduler, v.Flags, v.Timeout = "sh", FlagPersistent|FlagSched1|FlagSched2|FlagOnePacket|0x400, 60
	})
	tests := []struct {
		op   Op
		want string
	}{
		{Op{Kind: OpAddService, VS: v}, "ipvsadm -A -t [fd00::10]:443 -s sh -p 60 -o -b sh-fallback,sh-port --flags 0x400"},
		{Op{Kind: OpDeleteService, VS: v}, "ipvsadm -D -t [fd00::10]:443"},
		{Op{Kind: OpUpdateDestination, VS: v, RS: RealServer{Key: v.RealServers[0].Key, Weight: 0, Forward: ForwardTunnel}}, "ipvsadm -e -t [fd00::10]:443 -r [fd00::1]:8443 -i -w 0"},
		{Op{Kind: OpDeleteDestination, VS: v, RS: v.RealServers[0]}, "ipvsadm -d -t [fd00::10]:443 -r [fd00::1]:8443"},
		{Op{Kind: OpDeleteAddress, Addr: ip("fd00::10")}, "ip addr del fd00::10/128 dev kube-ipvs0"},
		{Op{Kind: OpAddService}, "add-service <nil>"},
		{Op{Kind: 99, VS: v}, "op(99)"},
	}
	for _, tt := range tests {
		if got := tt.op.String(); got != tt.want {
			t.Errorf("got  %q\nwant %q", got, tt.want)
		}
	}
}

func TestDumpIPVSIsDumpWithoutAddresses(t *testing.T) {
	st := state([]string{"fd00::10", "10.96.0.10"},
		vs("10.96.0.10:80/TCP", "10.244.1.2:80"),
		&VirtualServer{Key: VSKey{Addr: ip("10.96.0.10"), Port: 81, Proto: ProtoUDP}, Scheduler: "rr", RealServers: []RealServer{
			{Key: RSKey{ip("10.244.1.3"), 81}, Weight: 2}, {Key: RSKey{ip("10.244.1.2"), 81}, Weight: 1},
		}})
	want := `-A -t 10.96.0.10:80 -s rr
-a -t 10.96.0.10:80 -r 10.244.1.2:80 -m -w 1
-A -u 10.96.0.10:81 -s rr
-a -u 10.96.0.10:81 -r 10.244.1.2:81 -m -w 1
-a -u 10.96.0.10:81 -r 10.244.1.3:81 -m -w 2
`
	if got := st.DumpIPVS(); got != want {
		t.Errorf("DumpIPVS:\n%s\nwant:\n%s", got, want)
	}
	if got := st.Dump(); got != "addr 10.96.0.10/32\naddr fd00::10/128\n"+want {
		t.Errorf("Dump:\n%s", got)
	}
	var nilState *State
	if nilState.Dump() != "" || nilState.DumpIPVS() != "" {
		t.Error("nil state dumps something")
	}
}
