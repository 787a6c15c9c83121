package iptables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{`-A X -j RETURN`, []string{"-A", "X", "-j", "RETURN"}},
		{"  -A\tX  ", []string{"-A", "X"}},
		{`-m comment --comment "a b" -j X`, []string{"-m", "comment", "--comment", "a b", "-j", "X"}},
		// As iptables-save escapes quotes and backslashes inside quotes.
		{`--comment "type \'hash ip:port\' \"x\" \\"`, []string{"--comment", `type 'hash ip:port' "x" \`}},
		{`--comment ""`, []string{"--comment", ""}},
		{`a"b c"d`, []string{"ab cd"}},
	}
	for _, tc := range tests {
		got, err := splitArgs(tc.line)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("splitArgs(%q) = %q, %v; want %q", tc.line, got, err, tc.want)
		}
	}
	for _, bad := range []string{`--comment "open`, `--comment "x\`} {
		if _, err := splitArgs(bad); err == nil {
			t.Errorf("splitArgs(%q) succeeded", bad)
		}
	}
}

func TestQuoteArg(t *testing.T) {
	tests := []struct {
		arg     string
		comment bool
		want    string
	}{
		{"10.0.0.0/8", false, "10.0.0.0/8"},
		{"dst,dst", false, "dst,dst"},
		{"plain", true, "plain"},
		{"with.dot", true, `"with.dot"`}, // iptables-save quotes comments beyond [A-Za-z0-9_-]
		{"a b", false, `"a b"`},
		{"", false, `""`},
		{`it's "x"`, true, `"it\'s \"x\""`},
	}
	for _, tc := range tests {
		if got := quoteArg(tc.arg, tc.comment); got != tc.want {
			t.Errorf("quoteArg(%q, %v) = %s, want %s", tc.arg, tc.comment, got, tc.want)
		}
	}
}

// Every planned rule survives rendering and re-parsing unchanged, as it
// must to compare equal with what iptables lists.
func TestRuleRoundTrip(t *testing.T) {
	for _, p := range Plan(fullSnapshot(), fullConfig()).Families {
		for _, c := range p.Chains {
			for _, r := range c.Rules {
				args, err := splitArgs(formatRule(c.Name, r))
				if err != nil || len(args) < 2 || !Rule(args[2:]).Equal(r) {
					t.Errorf("%s: %q does not round-trip (%v)", c.Name, r, err)
				}
			}
		}
	}
}

func TestParseTableListing(t *testing.T) {
	out := `-P INPUT ACCEPT
-P FORWARD DROP
-N KUBE-FIREWALL
-N KUBE-FORWARD
-N KUBE-NODE-PORT
-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT
-A INPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
`
	got, err := parseTableListing(strings.Split(out, "\n"), func(c string) bool {
		return OwnsChain(TableFilter, c) || builtinChains[TableFilter][c]
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]Rule{
		"INPUT": {
			{"-m", "comment", "--comment", "kubernetes health check rules", "-j", "KUBE-NODE-PORT"},
			{"-j", "KUBE-FIREWALL"},
		},
		"FORWARD":        nil,
		"KUBE-NODE-PORT": nil,
		"KUBE-FORWARD": {
			{"-m", "comment", "--comment", "kubernetes forwarding rules", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "ACCEPT"},
		},
	}
	if len(got) != len(want) {
		t.Fatalf("got chains %v, want %v", got, want)
	}
	for name, rules := range want {
		g, ok := got[name]
		if !ok || !rulesEqual(g, rules) {
			t.Errorf("chain %s = %q (present %v), want %q", name, g, ok, rules)
		}
	}
}

func TestRestoreInput(t *testing.T) {
	got := restoreInput([]Chain{
		{Table: TableFilter, Name: "KUBE-FORWARD", Rules: []Rule{{"-j", "ACCEPT"}}},
		{Table: TableNAT, Name: "KUBE-MARK-MASQ", Rules: []Rule{{"-j", "MARK", "--set-xmark", "0x4000/0x4000"}}},
		{Table: TableNAT, Name: "KUBE-SERVICES"},
	})
	want := `*nat
:KUBE-MARK-MASQ - [0:0]
:KUBE-SERVICES - [0:0]
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
*filter
:KUBE-FORWARD - [0:0]
-A KUBE-FORWARD -j ACCEPT
COMMIT
`
	if got != want {
		t.Errorf("restoreInput =\n%s\nwant\n%s", got, want)
	}
}

func TestEntryString(t *testing.T) {
	tests := []struct {
		e    Entry
		want string
	}{
		{Entry{IP: ip("10.96.0.10"), Proto: ProtoTCP, Port: 80}, "10.96.0.10,tcp:80"},
		{Entry{IP: ip("fd00::1"), Proto: ProtoSCTP, Port: 3868}, "fd00::1,sctp:3868"},
		{Entry{IP: ip("10.0.0.5"), Proto: ProtoUDP, Port: 53, IP2: ip("10.0.0.5")}, "10.0.0.5,udp:53,10.0.0.5"},
		{Entry{IP: ip("1.2.3.4"), Proto: ProtoTCP, Port: 80, Net: pfx("10.0.0.0/8")}, "1.2.3.4,tcp:80,10.0.0.0/8"},
		{Entry{Port: 30080}, "30080"},
		{Entry{IP: ip("10.96.0.1")}, "10.96.0.1"},
		{Entry{IP: ip("10.96.0.1"), Proto: 1, Port: 8}, "10.96.0.1,1:8"},
	}
	for _, tc := range tests {
		if got := tc.e.String(); got != tc.want {
			t.Errorf("%#v.String() = %s, want %s", tc.e, got, tc.want)
		}
	}
}

func TestSetSpecValidate(t *testing.T) {
	spec := func(base string, f Family) SetSpec {
		for i, s := range SetSpecs(f) {
			if setSkeleton[i].name == base {
				return s
			}
		}
		t.Fatalf("no set %s", base)
		return SetSpec{}
	}
	tests := []struct {
		spec SetSpec
		e    Entry
		ok   bool
	}{
		{spec(setClusterIP, IPv4), Entry{IP: ip("10.0.0.1"), Proto: ProtoTCP, Port: 80}, true},
		{spec(setClusterIP, IPv4), Entry{IP: ip("fd00::1"), Proto: ProtoTCP, Port: 80}, false},
		{spec(setClusterIP, IPv6), Entry{IP: ip("::ffff:10.0.0.1"), Proto: ProtoTCP, Port: 80}, false},
		{spec(setClusterIP, IPv4), Entry{IP: ip("10.0.0.1"), Proto: 1, Port: 80}, false},
		{spec(setClusterIP, IPv4), Entry{IP: ip("10.0.0.1"), Proto: ProtoTCP, Port: 80, IP2: ip("10.0.0.1")}, false},
		{spec(setLoopBack, IPv4), Entry{IP: ip("10.0.0.1"), Proto: ProtoTCP, Port: 80, IP2: ip("10.0.0.1")}, true},
		{spec(setLoopBack, IPv4), Entry{IP: ip("10.0.0.1"), Proto: ProtoTCP, Port: 80}, false},
		{spec(setLoadBalancerSrcCIDR, IPv4), Entry{IP: ip("1.2.3.4"), Proto: ProtoTCP, Port: 80, Net: pfx("10.0.0.0/8")}, true},
		{spec(setLoadBalancerSrcCIDR, IPv4), Entry{IP: ip("1.2.3.4"), Proto: ProtoTCP, Port: 80, Net: netip.PrefixFrom(ip("10.1.0.0"), 8)}, false},
		{spec(setLoadBalancerSrcCIDR, IPv4), Entry{IP: ip("1.2.3.4"), Proto: ProtoTCP, Port: 80, Net: pfx("0.0.0.0/0")}, false},
		{spec(setNodePortTCP, IPv6), Entry{Port: 30080}, true},
		{spec(setNodePortTCP, IPv4), Entry{Port: 30080, Proto: ProtoTCP}, false},
		{spec(setIPVSIPs, IPv6), Entry{IP: ip("fd00::1")}, true},
		{spec(setIPVSIPs, IPv6), Entry{IP: ip("fd00::1"), Port: 1}, false},
		{SetSpec{Name: "X", Type: "list:set"}, Entry{Port: 1}, false},
	}
	for _, tc := range tests {
		if err := tc.spec.Validate(tc.e); (err == nil) != tc.ok {
			t.Errorf("%s.Validate(%s) = %v, want ok=%v", tc.spec.Name, tc.e, err, tc.ok)
		}
	}
}

func TestFailedLine(t *testing.T) {
	input := "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j ACCEPT\n-A KUBE-SERVICES -j KUBE-NOPE\nCOMMIT\n"
	for _, out := range []string{
		"iptables-restore: line 4 failed\n",
		"iptables-nft-restore v1.8.9 (nf_tables): Chain 'KUBE-NOPE' does not exist\nError occurred at line: 4\n",
		"iptables-nft-restore v1.8.9 (nf_tables): \nline 4: RULE_APPEND failed (No such file or directory)\n",
	} {
		if got, want := failedLine(out, input), " (line 4: -A KUBE-SERVICES -j KUBE-NOPE)"; got != want {
			t.Errorf("failedLine(%q) = %q, want %q", out, got, want)
		}
	}
	if got := failedLine("something else", input); !strings.Contains(got, input) {
		t.Errorf("without a line number the input should be quoted, got %q", got)
	}
}
