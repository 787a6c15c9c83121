package iptables

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink/nl"
)

func TestSkbMarkEntry(t *testing.T) {
	spec := SetSpecs(IPv4)[len(setSkeleton)-1]
	if spec.Name != setExternalLocalMark || !spec.SkbInfo {
		t.Fatalf("last set %+v, want %s with skbinfo", spec, setExternalLocalMark)
	}
	e := Entry{IP: netip.MustParseAddr("10.0.0.5"), Proto: ProtoTCP, Port: 80, SkbMark: 0x10000, SkbMarkMask: 0x3fff0000}
	tests := []struct {
		name  string
		spec  SetSpec
		e     Entry
		valid bool
		text  string
	}{
		{"marked", spec, e, true, "10.0.0.5,tcp:80 skbmark 0x10000/0x3fff0000"},
		{"full mask printed as ipset does", spec, Entry{IP: e.IP, Proto: ProtoTCP, Port: 80, SkbMark: 0x10000, SkbMarkMask: 0xffffffff}, true, "10.0.0.5,tcp:80 skbmark 0x10000"},
		{"no mask", spec, Entry{IP: e.IP, Proto: ProtoTCP, Port: 80, SkbMark: 0x10000}, false, ""},
		{"set without skbinfo", SetSpecs(IPv4)[1], e, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate(tt.e)
			if (err == nil) != tt.valid {
				t.Fatalf("Validate: %v, want valid %v", err, tt.valid)
			}
			if tt.valid && tt.e.String() != tt.text {
				t.Errorf("String %q, want %q", tt.e.String(), tt.text)
			}
		})
	}
	if got := spec.CreateArgs(); got != "create KUBE-EXTERNAL-LOCAL-MARK hash:ip,port family inet hashsize 1024 maxelem 65536 skbinfo" {
		t.Errorf("CreateArgs %q", got)
	}
}

// TestSkbMarkAttr: what addSkbMark sends parses back as the same entry,
// as the kernel lists it.
func TestSkbMarkAttr(t *testing.T) {
	for _, e := range []Entry{
		{IP: netip.MustParseAddr("10.0.0.5"), Proto: ProtoTCP, Port: 80, SkbMark: 0x10000, SkbMarkMask: 0x3fff0000},
		{IP: netip.MustParseAddr("2001:db8::5"), Proto: ProtoSCTP, Port: 30080, SkbMark: 0x3ffe0000, SkbMarkMask: 0x3fff0000},
	} {
		data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
		appendSkbMarkData(data, e)
		b := data.Serialize()
		got, err := parseEntry(HashIPPort, b[4:]) // the attribute's payload
		if err != nil || got != e {
			t.Errorf("parsed %v, %v; want %v", got, err, e)
		}
	}
}

// TestExternalLocalMarkRules: the mangle rules follow the set and the
// local-traffic detector of the family.
func TestExternalLocalMarkRules(t *testing.T) {
	marks := []Entry{
		{IP: netip.MustParseAddr("192.0.2.50"), Proto: ProtoTCP, Port: 80, SkbMark: 0x10000, SkbMarkMask: 0x3fff0000},
		{IP: netip.MustParseAddr("192.0.2.50"), Proto: ProtoTCP, Port: 80, SkbMark: 0x20000, SkbMarkMask: 0x3fff0000}, // one per address
		{IP: netip.MustParseAddr("192.0.2.51"), Proto: ProtoTCP, Port: 80},                                            // no mark: dropped
	}
	tests := []struct {
		name     string
		cfg      Config
		wantPods []string // the pod rule's source match; nil: no pod rule
		rules    int
	}{
		{"no marks: no rules", Config{Families: []Family{IPv4}, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}, nil, 0},
		{"cluster CIDR", Config{Families: []Family{IPv4}, ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, ExternalLocalMarks: marks}, []string{"-s", "10.244.0.0/16"}, 3},
		{"bridge detector", Config{Families: []Family{IPv4}, NotLocal: map[Family][]string{IPv4: {"!", "-i", "cbr0"}}, ExternalLocalMarks: marks}, []string{"-i", "cbr0"}, 3},
		{"no detector: the node only", Config{Families: []Family{IPv4}, ExternalLocalMarks: marks}, nil, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Plan(nil, tt.cfg)
			fp := d.Families[0]
			c := fp.Chain(TableMangle, chainExternalLocalMark)
			if c == nil || len(c.Rules) != tt.rules {
				t.Fatalf("chain %+v, want %d rules", c, tt.rules)
			}
			if n := len(fp.Set(setExternalLocalMark).Entries); (n == 1) != (tt.cfg.ExternalLocalMarks != nil) {
				t.Errorf("%d entries", n)
			}
			if tt.wantPods != nil && !slices.Equal(c.Rules[2][:len(tt.wantPods)], tt.wantPods) {
				t.Errorf("pod rule %v, want it to start with %v", c.Rules[2], tt.wantPods)
			}
		})
	}
}

// TestPlannerMarksOnly: a change of marks alone re-plans no Service and
// keeps the other sets' slices.
func TestPlannerMarksOnly(t *testing.T) {
	var p Planner
	cfg := fullConfig()
	d1 := p.Plan(fullSnapshot(), cfg)
	cfg.ExternalLocalMarks = cfg.ExternalLocalMarks[:1]
	snap := fullSnapshot()
	snap.Changed = nil
	d2 := p.Plan(snap, cfg)
	a, b := d1.Families[0].Set(setClusterIP).Entries, d2.Families[0].Set(setClusterIP).Entries
	if len(a) == 0 || &a[0] != &b[0] {
		t.Error("KUBE-CLUSTER-IP was rebuilt")
	}
	if n := len(d2.Families[0].Set(setExternalLocalMark).Entries); n != 1 {
		t.Errorf("%d marks, want 1", n)
	}
}
