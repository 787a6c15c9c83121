package iptables

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

type fakes struct {
	ipset  *FakeIPSet
	tables map[Family]*FakeTables
	a      *Applier
}

func newFakes() *fakes {
	f := &fakes{ipset: NewFakeIPSet(), tables: map[Family]*FakeTables{}}
	f.a = &Applier{IPSet: f.ipset, Tables: map[Family]Tables{}}
	for _, fam := range []Family{IPv4, IPv6} {
		t := NewFakeTables()
		t.SetExists = f.ipset.Has
		f.tables[fam] = t
		f.a.Tables[fam] = t
	}
	return f
}

// mutations returns the ops that change something, in order.
func (f *fakes) mutations() []string {
	var out []string
	keep := func(op string) bool {
		return strings.HasPrefix(op, "add ") || strings.HasPrefix(op, "del ") || strings.HasPrefix(op, "destroy ") ||
			strings.HasPrefix(op, "restore") || strings.Contains(op, " -I ") || strings.Contains(op, " -D ")
	}
	for _, op := range f.ipset.Ops {
		if keep(op) {
			out = append(out, op)
		}
	}
	for _, fam := range []Family{IPv4, IPv6} {
		for _, op := range f.tables[fam].Ops {
			if keep(op) {
				out = append(out, fam.String()+" "+op)
			}
		}
	}
	return out
}

func (f *fakes) resetOps() {
	f.ipset.Ops = nil
	for _, t := range f.tables {
		t.Ops = nil
	}
}

// checkMatches verifies the fakes hold exactly the plan.
func (f *fakes) checkMatches(t *testing.T, d *Desired) {
	t.Helper()
	for _, p := range d.Families {
		for _, s := range p.Sets {
			got, err := f.ipset.ListEntries(s.Spec)
			if err != nil || !slices.Equal(got, s.Entries) {
				t.Errorf("%s = %v (%v), want %v", s.Spec.Name, got, err, s.Entries)
			}
		}
		for _, c := range p.Chains {
			if got := f.tables[p.Family].Chains[c.Table][c.Name]; !rulesEqual(got, c.Rules) {
				t.Errorf("%v %s/%s = %q, want %q", p.Family, c.Table, c.Name, got, c.Rules)
			}
		}
	}
}

func TestApplyFreshThenIdempotent(t *testing.T) {
	f := newFakes()
	d := Plan(fullSnapshot(), fullConfig())
	ch, err := f.a.Apply(d)
	if err != nil {
		t.Fatal(err)
	}
	f.checkMatches(t, d)
	if len(ch.ChainsWritten) != 2*len(chainSkeleton) || len(ch.JumpsInserted) != 2*len(Jumps) || ch.EntriesDeleted != 0 {
		t.Errorf("changes = %+v", ch)
	}
	// Inserting each jump at the top reverses the order within a chain,
	// as under upstream.
	wantInput := []string{chainIPVSFilter, chainProxyFirewall, chainNodePort}
	var gotInput []string
	for _, r := range f.tables[IPv4].Chains[TableFilter]["INPUT"] {
		gotInput = append(gotInput, r[len(r)-1])
	}
	if !slices.Equal(gotInput, wantInput) {
		t.Errorf("INPUT jumps = %v, want %v", gotInput, wantInput)
	}
	// One restore per family with every chain.
	restores := 0
	for _, op := range f.mutations() {
		if strings.Contains(op, "restore") {
			restores++
		}
	}
	if restores != 2 {
		t.Errorf("%d restores, want 2", restores)
	}

	f.resetOps()
	ch, err = f.a.Apply(d)
	if err != nil || !ch.Empty() {
		t.Fatalf("second apply: %+v, %v", ch, err)
	}
	if m := f.mutations(); len(m) != 0 {
		t.Errorf("second apply changed things: %v", m)
	}
}

func TestApplyDiff(t *testing.T) {
	f := newFakes()
	if _, err := f.a.Apply(Plan(fullSnapshot(), fullConfig())); err != nil {
		t.Fatal(err)
	}
	// Someone else added a member to our set and broke a chain; the
	// "game" service goes away and "dns" gets a new local endpoint.
	v4 := SetSpecs(IPv4)
	stale := Entry{IP: ip("10.96.9.9"), Proto: ProtoTCP, Port: 9}
	if err := f.ipset.AddEntries(v4[1], []Entry{stale}); err != nil {
		t.Fatal(err)
	}
	f.tables[IPv6].Chains[TableFilter][chainForward] = nil
	snap := fullSnapshot()
	snap.Services = slices.DeleteFunc(snap.Services, func(s *servicecache.Service) bool { return s.Key.Name == "game" })
	snap.Services[0].Ports[0].Endpoints = append(snap.Services[0].Ports[0].Endpoints, ep("10.244.1.4", 53, "node-a"))
	d := Plan(snap, fullConfig())

	f.resetOps()
	ch, err := f.a.Apply(d)
	if err != nil {
		t.Fatal(err)
	}
	f.checkMatches(t, d)
	want := []string{
		"add KUBE-LOOP-BACK 10.244.1.4,udp:53,10.244.1.4",
		"del KUBE-LOOP-BACK 10.244.1.7,udp:7777,10.244.1.7",
		"del KUBE-LOOP-BACK 10.244.1.7,sctp:3868,10.244.1.7",
		"del KUBE-CLUSTER-IP 10.96.0.30,udp:7777",
		"del KUBE-CLUSTER-IP 10.96.0.30,sctp:3868",
		"del KUBE-CLUSTER-IP 10.96.9.9,tcp:9",
		"del KUBE-NODE-PORT-UDP 30777",
		"del KUBE-NODE-PORT-LOCAL-UDP 30777",
		"del KUBE-NODE-PORT-SCTP-HASH 192.168.10.5,sctp:30868",
		"del KUBE-NODE-PORT-SCTP-HASH 203.0.113.7,sctp:30868",
		"del KUBE-NODE-PORT-LOCAL-SCTP-HASH 192.168.10.5,sctp:30868",
		"del KUBE-NODE-PORT-LOCAL-SCTP-HASH 203.0.113.7,sctp:30868",
		"del KUBE-IPVS-IPS 10.96.0.30",
		"IPv4 restore nat/KUBE-NODE-PORT",
		"IPv6 restore filter/KUBE-FORWARD",
	}
	if got := f.mutations(); !slices.Equal(got, want) {
		t.Errorf("ops:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if ch.EntriesAdded != 1 || ch.EntriesDeleted != 12 || len(ch.ChainsWritten) != 2 || len(ch.JumpsInserted) != 0 {
		t.Errorf("changes = %+v", ch)
	}
	// Stale entries go only after the rules changed.
	var order []string
	for _, op := range f.ipset.Ops {
		if strings.HasPrefix(op, "add ") || strings.HasPrefix(op, "del ") {
			order = append(order, op[:3])
		}
	}
	if !slices.IsSorted(order) { // "add" < "del"
		t.Errorf("adds and deletes interleave: %v", order)
	}
}

func TestApplyRestoresJump(t *testing.T) {
	f := newFakes()
	d := Plan(fullSnapshot(), fullConfig())
	if _, err := f.a.Apply(d); err != nil {
		t.Fatal(err)
	}
	// A lost jump is put back at the top; one moved down stays where it is
	// (upstream checks presence with -C, not position).
	nat := f.tables[IPv4].Chains[TableNAT]
	nat["PREROUTING"] = nil
	nat["OUTPUT"] = append([]Rule{{"-j", "ACCEPT"}}, nat["OUTPUT"]...)
	f.resetOps()
	ch, err := f.a.Apply(d)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`IPv4 -t nat -I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`}
	if got := f.mutations(); !slices.Equal(got, want) || len(ch.JumpsInserted) != 1 {
		t.Errorf("ops = %q, changes %+v; want %q", got, ch, want)
	}
}

func TestApplyErrors(t *testing.T) {
	boom := errors.New("boom")

	t.Run("set create fails", func(t *testing.T) {
		f := newFakes()
		f.ipset.Fail["create KUBE-LOAD-BALANCER "] = boom
		_, err := f.a.Apply(Plan(fullSnapshot(), fullConfig()))
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v, want boom", err)
		}
		// The rules referencing the missing set cannot be restored...
		if !strings.Contains(err.Error(), "set KUBE-LOAD-BALANCER does not exist") {
			t.Errorf("restore error not reported: %v", err)
		}
		// ...but the other sets were filled, and IPv6 went through.
		if len(f.ipset.Sets["KUBE-CLUSTER-IP"].Entries) == 0 || len(f.ipset.Sets["KUBE-6-CLUSTER-IP"].Entries) == 0 {
			t.Error("other sets were not filled")
		}
		if _, ok := f.tables[IPv6].Chains[TableNAT][chainServices]; !ok {
			t.Error("IPv6 chains were not written")
		}
		// No jump to a chain that could not be created.
		for _, op := range f.tables[IPv4].Ops {
			if strings.Contains(op, " -I ") {
				t.Errorf("inserted a jump to a missing chain: %s", op)
			}
		}
	})

	t.Run("add fails", func(t *testing.T) {
		f := newFakes()
		f.ipset.Fail["add KUBE-6-IPVS-IPS"] = boom
		_, err := f.a.Apply(Plan(fullSnapshot(), fullConfig()))
		if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "IPv6: ") || !strings.Contains(err.Error(), "KUBE-6-IPVS-IPS") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("list fails", func(t *testing.T) {
		f := newFakes()
		f.tables[IPv4].Fail["-t filter -S"] = boom
		_, err := f.a.Apply(Plan(fullSnapshot(), fullConfig()))
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v, want boom", err)
		}
		// One iptables-save lists both tables: without it, no chain is
		// written (the sets still are), and IPv6 goes on.
		if _, ok := f.tables[IPv4].Chains[TableNAT][chainServices]; ok {
			t.Error("nat chains written without a listing")
		}
		if _, ok := f.tables[IPv4].Chains[TableFilter][chainForward]; ok {
			t.Error("filter chains written without a listing")
		}
		if _, ok := f.tables[IPv6].Chains[TableNAT][chainServices]; !ok {
			t.Error("IPv6 chains were not written")
		}
	})

	t.Run("no tables", func(t *testing.T) {
		a := &Applier{IPSet: NewFakeIPSet(), Tables: map[Family]Tables{IPv4: NewFakeTables()}}
		if _, err := a.Apply(Plan(fullSnapshot(), fullConfig())); err == nil || !strings.Contains(err.Error(), "IPv6") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestCleanup(t *testing.T) {
	f := newFakes()
	// Foreign: kubelet's chain, jumped to from INPUT.
	filter := f.tables[IPv4].Chains[TableFilter]
	filter["KUBE-FIREWALL"] = []Rule{{"-j", "DROP"}}
	filter["INPUT"] = []Rule{{"-j", "KUBE-FIREWALL"}}
	if _, err := f.a.Apply(Plan(fullSnapshot(), fullConfig())); err != nil {
		t.Fatal(err)
	}
	// A jump inserted twice by hand goes too.
	nat := f.tables[IPv4].Chains[TableNAT]
	nat["OUTPUT"] = append(nat["OUTPUT"], Jumps[0].Rule())
	if err := f.a.Cleanup([]Family{IPv4, IPv6}); err != nil {
		t.Fatal(err)
	}
	if len(f.ipset.Sets) != 0 {
		t.Errorf("sets left: %v", f.ipset.Sets)
	}
	for _, fam := range []Family{IPv4, IPv6} {
		for table, chains := range f.tables[fam].Chains {
			for name, rules := range chains {
				if OwnsChain(table, name) {
					t.Errorf("%v: chain %s/%s left", fam, table, name)
				}
				for _, r := range rules {
					if slices.ContainsFunc(Jumps, func(j Jump) bool { return j.Rule().Equal(r) }) {
						t.Errorf("%v: jump left in %s/%s: %s", fam, table, name, r)
					}
				}
			}
		}
	}
	if !rulesEqual(filter["KUBE-FIREWALL"], []Rule{{"-j", "DROP"}}) || !rulesEqual(filter["INPUT"], []Rule{{"-j", "KUBE-FIREWALL"}}) {
		t.Errorf("foreign rules changed: %v", filter)
	}
	// Cleaning a clean system is fine.
	if err := f.a.Cleanup([]Family{IPv4, IPv6}); err != nil {
		t.Fatal(err)
	}
}

func TestFakesRefuseForeign(t *testing.T) {
	f := newFakes()
	if err := f.ipset.DestroySet("FOREIGN"); err == nil {
		t.Error("destroyed a foreign set")
	}
	if err := f.ipset.EnsureSet(SetSpec{Name: "FOREIGN", Type: HashIP}); err == nil {
		t.Error("created a foreign set")
	}
	tables := f.tables[IPv4]
	if err := tables.ReplaceChains([]Chain{{Table: TableFilter, Name: "KUBE-FIREWALL"}}); err == nil {
		t.Error("replaced a foreign chain")
	}
	if err := tables.DeleteChains(TableNAT, []string{"KUBE-SVC-ABC"}); err == nil {
		t.Error("deleted a foreign chain")
	}
	if err := tables.InsertJump(Jump{Table: TableFilter, From: "KUBE-FIREWALL", To: chainForward}); err == nil {
		t.Error("inserted a jump from a non-built-in chain")
	}
	if err := tables.InsertJump(Jump{Table: TableFilter, From: "INPUT", To: "KUBE-FIREWALL"}); err == nil {
		t.Error("inserted a jump to a foreign chain")
	}
}

// A full apply skips listing the rules while the nftables generation is
// the one of the last full apply that wrote nothing; anything else lists.
func TestApplyGenerationSkipsListing(t *testing.T) {
	f := newFakes()
	gen, genErr := uint32(1), error(nil)
	calls := 0
	f.a.Generation = func() (uint32, error) { calls++; return gen, genErr }
	d := Plan(fullSnapshot(), fullConfig())
	listings := func() int {
		n := 0
		for _, tab := range f.tables {
			for _, op := range tab.Ops {
				if strings.HasSuffix(op, " -S") {
					n++
				}
			}
		}
		return n
	}
	for i, step := range []struct {
		name        string
		gen         uint32
		err         error
		incremental bool
		wantLists   int // nat, filter and mangle of two families: 6
	}{
		{name: "first apply", gen: 1, wantLists: 6},
		{name: "our writes moved it", gen: 2, wantLists: 6},
		{name: "unchanged", gen: 2, wantLists: 0},
		{name: "incremental: never listed, never asked", gen: 2, incremental: true},
		{name: "still unchanged", gen: 2, wantLists: 0},
		{name: "unreadable: listed, no error", gen: 2, err: errors.New("no netlink"), wantLists: 6},
		{name: "readable again: listed once", gen: 2, wantLists: 6},
		{name: "unchanged again", gen: 2, wantLists: 0},
		{name: "moved by someone else", gen: 7, wantLists: 6},
	} {
		gen, genErr = step.gen, step.err
		f.resetOps()
		before := calls
		var err error
		if step.incremental {
			_, err = f.a.ApplyIncremental(d)
		} else {
			_, err = f.a.Apply(d)
		}
		if err != nil {
			t.Fatalf("step %d (%s): %v", i, step.name, err)
		}
		if got := listings(); got != step.wantLists {
			t.Errorf("step %d (%s): %d listings, want %d", i, step.name, got, step.wantLists)
		}
		if step.incremental && calls != before {
			t.Errorf("step %d (%s): the generation was read", i, step.name)
		}
	}
	f.checkMatches(t, d)

	// A failed apply forgets the generation: the next one lists.
	f.tables[IPv4].Fail["restore"] = errors.New("boom")
	f.tables[IPv4].Chains[TableNAT]["KUBE-SERVICES"] = nil // drift, so that a restore is due
	gen = 8
	if _, err := f.a.Apply(d); err == nil {
		t.Fatal("apply with a failing restore succeeded")
	}
	delete(f.tables[IPv4].Fail, "restore")
	f.resetOps()
	if _, err := f.a.Apply(d); err != nil {
		t.Fatal(err)
	}
	if got := listings(); got != 6 {
		t.Errorf("after a failure: %d listings, want 6", got)
	}
}
