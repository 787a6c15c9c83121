package iptables

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/internal/fuzzgen"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// FuzzIptablesPlan plans the ipsets and chains of random Services and
// EndpointSlices (decoded by fuzzgen and converted by the service cache)
// and checks that the plan is valid (ValidatePlan), agrees with the IPVS
// plan on the service addresses, and that the applier puts it into the
// fakes, has nothing left to do on a second pass, also from an older plan,
// and cleans it all up.
//
//	go test -run='^$' -fuzz=FuzzIptablesPlan -fuzztime=3m -parallel=1 ./pkg/iptables/
func FuzzIptablesPlan(f *testing.F) {
	for _, seed := range fuzzgen.Seeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sc := fuzzgen.Generate(data)
		snap := sc.Snapshot()
		cfg := fuzzConfig(sc)

		d := Plan(snap, cfg)
		if err := ValidatePlan(d, cfg); err != nil {
			t.Fatalf("invalid plan: %v\n%s", err, d.Dump())
		}
		if again := Plan(snap, cfg).Dump(); again != d.Dump() {
			t.Fatalf("Plan is not deterministic:\n%s\nthen:\n%s", d.Dump(), again)
		}
		if err := checkAgreesWithIPVS(snap, cfg); err != nil {
			t.Fatal(err)
		}

		// From scratch, then again, reading the kernel or trusting memory.
		fk := newFakes()
		fk.apply(t, "Apply into empty fakes", fk.a.Apply, d)
		fk.idle(t, "a second Apply", fk.a.Apply, d)
		fk.idle(t, "ApplyIncremental after Apply", fk.a.ApplyIncremental, d)

		// From an older plan (half the Services, another host address),
		// incrementally then in full, and in full only.
		old := sc.SnapshotOf(snap.Node, sc.Services[:len(sc.Services)/2], sc.Slices)
		oldCfg := cfg
		oldCfg.LocalAddresses = append(slices.Clone(cfg.LocalAddresses), netip.MustParseAddr("192.168.1.99"))
		oldPlan := Plan(old, oldCfg)

		// A Planner that re-plans only what changed arrives at the same
		// plan, and back again.
		pl := new(Planner)
		if got := pl.Plan(old, cfg).Dump(); got != Plan(old, cfg).Dump() {
			t.Fatalf("Planner on the old snapshot:\n%s\nPlan:\n%s", got, Plan(old, cfg).Dump())
		}
		if got := pl.Plan(withChanged(snap, old), cfg).Dump(); got != d.Dump() {
			t.Fatalf("Planner after the change:\n%s\nPlan:\n%s", got, d.Dump())
		}
		if got := pl.Plan(withChanged(old, snap), cfg).Dump(); got != Plan(old, cfg).Dump() {
			t.Fatalf("Planner after the change back:\n%s\nPlan:\n%s", got, Plan(old, cfg).Dump())
		}
		full := newFakes()
		full.apply(t, "Apply the old plan", full.a.Apply, oldPlan)
		full.apply(t, "Apply over the old plan", full.a.Apply, d)
		full.idle(t, "a second Apply over the old plan", full.a.Apply, d)
		fk = newFakes()
		fk.apply(t, "Apply the old plan", fk.a.Apply, oldPlan)
		fk.apply(t, "ApplyIncremental over the old plan", fk.a.ApplyIncremental, d)
		fk.idle(t, "Apply after ApplyIncremental", fk.a.Apply, d)

		if err := fk.a.Cleanup([]Family{IPv4, IPv6}); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
		if len(fk.ipset.Sets) != 0 {
			t.Fatalf("Cleanup left sets: %v", slices.Sorted(maps.Keys(fk.ipset.Sets)))
		}
		for fam, tables := range fk.tables {
			for table, chains := range tables.Chains {
				for name, rules := range chains {
					if OwnsChain(table, name) || slices.ContainsFunc(rules, func(r Rule) bool { return slices.Contains(r, "-j") && OwnsChain(table, r[len(r)-1]) }) {
						t.Fatalf("Cleanup left %v %s/%s: %q", fam, table, name, rules)
					}
				}
			}
		}
	})
}

// fuzzConfig is the planner configuration of a scenario.
func fuzzConfig(sc *fuzzgen.Scenario) Config {
	cfg := Config{
		ClusterCIDRs:   sc.ClusterCIDRs,
		MasqueradeAll:  sc.MasqueradeAll,
		MasqueradeMark: sc.MasqueradeMark,
		NodePortIPs:    servicecache.NodePortAddresses{Prefixes: sc.NodePortCIDRs}.NodePortIPs(nil, sc.LocalAddresses),
		LocalAddresses: sc.LocalAddresses,
		NodeIPs:        sc.NodeIPs,
	}
	for _, f := range sc.Families {
		cfg.Families = append(cfg.Families, Family(f))
	}
	for f, args := range sc.NotLocal {
		if cfg.NotLocal == nil {
			cfg.NotLocal = map[Family][]string{}
		}
		cfg.NotLocal[Family(f)] = args
	}
	return cfg
}

// ValidatePlan checks a plan made with cfg: one plan per distinct known
// family of cfg, in order; every set of the family, as SetSpecs declares
// it, with sorted, unique entries that fit it (SetSpec.Validate) and that
// the kernel takes; every chain of ours, each rule surviving the round trip
// through iptables-save text, matching only sets of its family and jumping
// only to built-in targets or our chains of its table; the jumps as
// declared.
func ValidatePlan(d *Desired, cfg Config) error {
	if d == nil {
		return errors.New("nil plan")
	}
	var wantFams []Family
	for _, f := range cfg.Families {
		if (f == IPv4 || f == IPv6) && !slices.Contains(wantFams, f) {
			wantFams = append(wantFams, f)
		}
	}
	var gotFams []Family
	for _, p := range d.Families {
		if p == nil {
			return errors.New("nil family plan")
		}
		gotFams = append(gotFams, p.Family)
	}
	if !slices.Equal(gotFams, wantFams) {
		return fmt.Errorf("families %v, want %v", gotFams, wantFams)
	}
	var errs []error
	for _, p := range d.Families {
		if err := validateFamily(p); err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", p.Family, err))
		}
	}
	for _, pr := range d.Problems {
		if pr == "" {
			errs = append(errs, errors.New("empty problem"))
		}
	}
	for i, pr := range d.ServiceProblems {
		if pr.Service == (servicecache.ServiceKey{}) || pr.Reason == "" || pr.Message == "" {
			errs = append(errs, fmt.Errorf("incomplete service problem %+v", pr))
		}
		if i > 0 && d.ServiceProblems[i-1].Service.Compare(pr.Service) > 0 {
			errs = append(errs, fmt.Errorf("service problems not sorted: %v before %v", d.ServiceProblems[i-1].Service, pr.Service))
		}
	}
	return errors.Join(errs...)
}

func validateFamily(p *FamilyPlan) error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	specs := SetSpecs(p.Family)
	if len(p.Sets) != len(specs) {
		return fmt.Errorf("%d sets, want %d", len(p.Sets), len(specs))
	}
	sets := map[string]bool{}
	for i, s := range p.Sets {
		if s.Spec != specs[i] || !OwnsSet(s.Spec.Name) || len(s.Spec.Name) > maxSetNameLen {
			fail("set %d is %+v, want %+v", i, s.Spec, specs[i])
			continue
		}
		sets[s.Spec.Name] = true
		if uint32(len(s.Entries)) > max(s.Spec.MaxElem, 65536) {
			fail("%s: %d entries", s.Spec.Name, len(s.Entries))
		}
		for j, e := range s.Entries {
			if j > 0 && compareEntries(s.Entries[j-1], e) >= 0 {
				fail("%s: entries %s and %s not sorted and unique", s.Spec.Name, s.Entries[j-1], e)
			}
			if err := s.Spec.Validate(e); err != nil {
				fail("%v", err)
			}
			if err := kernelTakes(s.Spec, e); err != nil {
				fail("%s: entry %s: %v", s.Spec.Name, e, err)
			}
		}
	}

	if len(p.Chains) != len(chainSkeleton) {
		fail("%d chains, want %d", len(p.Chains), len(chainSkeleton))
	}
	chains := map[Table]map[string]bool{}
	for i, c := range p.Chains {
		if i < len(chainSkeleton) && (c.Table != chainSkeleton[i].table || c.Name != chainSkeleton[i].name) {
			fail("chain %d is %s/%s", i, c.Table, c.Name)
		}
		if chains[c.Table] == nil {
			chains[c.Table] = map[string]bool{}
		}
		chains[c.Table][c.Name] = true
	}
	for _, c := range p.Chains {
		for _, r := range c.Rules {
			line := formatRule(c.Name, r)
			back, err := parseTableListing([]string{line}, func(string) bool { return true })
			if err != nil || len(back[c.Name]) != 1 || !back[c.Name][0].Equal(r) {
				fail("%s/%s: rule %q does not survive iptables-save text: %q (%v)", c.Table, c.Name, r, back[c.Name], err)
			}
			if len(r) == 0 || slices.Contains(r, "") {
				fail("%s/%s: rule %q has an empty argument", c.Table, c.Name, r)
			}
			for i := 0; i+1 < len(r); i++ {
				switch arg := r[i+1]; r[i] {
				case "--match-set":
					if !sets[arg] {
						fail("%s/%s: rule %q matches set %s, not one of the family's", c.Table, c.Name, r, arg)
					}
				case "-j":
					if !builtinTargets[arg] && !chains[c.Table][arg] {
						fail("%s/%s: rule %q jumps to %s, not a chain of table %s", c.Table, c.Name, r, arg, c.Table)
					}
				}
			}
		}
	}
	if !slices.Equal(p.Jumps, Jumps) {
		fail("jumps %v, want %v", p.Jumps, Jumps)
	}
	for _, j := range p.Jumps {
		if err := checkJump(j); err != nil {
			fail("%v", err)
		}
	}
	return errors.Join(errs...)
}

// kernelTakes checks what SetSpec.Validate does not and the kernel refuses:
// hash:ip and hash:ip,port sets take no unspecified address (0.0.0.0 and
// :: fail with IPSET_ERR_HASH_ELEM and EINVAL; the netlink applier then
// stops, and the entries after it are missing too), and a network entry
// needs a prefix length the kernel allows (1 to 32 or 128).
func kernelTakes(spec SetSpec, e Entry) error {
	if (spec.Type == HashIP || spec.Type == HashIPPort) && e.IP.IsUnspecified() {
		return fmt.Errorf("%s refuses the unspecified address", spec.Type)
	}
	if e.Net.IsValid() && (e.Net.Bits() < 1 || e.Net.Bits() > e.Net.Addr().BitLen()) {
		return fmt.Errorf("prefix length %d", e.Net.Bits())
	}
	return nil
}

// checkAgreesWithIPVS compares the sets that list service addresses with
// the IPVS plan of the same snapshot, with the IPVS settings a proxy derives
// from the same host addresses: KUBE-IPVS-IPS must hold exactly the
// addresses IPVS binds on kube-ipvs0 (a bound address missing from it
// exposes the host's own ports on that address), and KUBE-CLUSTER-IP,
// KUBE-EXTERNAL-IP(-LOCAL) and KUBE-LOAD-BALANCER exactly the
// address:port:protocol of the cluster IP, external IP and load-balancer
// virtual servers.
//
// Services with a port protocol the API refuses but this planner takes
// ("tcp": parseProto ignores case, ipvs.ProtoFromV1 does not) are left out.
func checkAgreesWithIPVS(snap *servicecache.Snapshot, cfg Config) error {
	snap = &servicecache.Snapshot{Node: snap.Node, Services: slices.DeleteFunc(slices.Clone(snap.Services), func(svc *servicecache.Service) bool {
		return slices.ContainsFunc(svc.Ports, func(p servicecache.ServicePort) bool {
			_, ours := parseProto(string(p.Protocol))
			_, theirs := ipvs.ProtoFromV1(p.Protocol)
			return ours != theirs
		})
	})}
	d := Plan(snap, cfg)
	ipvsCfg := ipvs.Config{LocalAddresses: cfg.LocalAddresses}
	plan := ipvs.Plan(snap, ipvsCfg)
	// Which Service port each virtual server comes from, conflicts
	// between Services included (the iptables sets have no notion of them).
	type kindKey struct {
		kind ipvs.Kind
		e    Entry
	}
	want := map[kindKey]bool{}
	for _, svc := range snap.Services {
		for _, vs := range ipvs.PlanService(svc, &snap.Node, ipvsCfg) {
			want[kindKey{vs.Kind, Entry{IP: vs.Key.Addr, Proto: ipsetProto(vs.Key.Proto), Port: vs.Key.Port}}] = true
		}
	}
	var errs []error
	for _, p := range d.Families {
		compare := func(what string, got, want []Entry) {
			slices.SortFunc(got, compareEntries)
			slices.SortFunc(want, compareEntries)
			got, want = slices.Compact(got), slices.Compact(want)
			if !slices.Equal(got, want) {
				errs = append(errs, fmt.Errorf("%v %s: ipsets have %v, IPVS %v\n%s", p.Family, what, got, want, dumpServices(snap)))
			}
		}
		var bound []Entry
		for _, a := range plan.Addresses {
			if p.Family.Has(a) {
				bound = append(bound, Entry{IP: a})
			}
		}
		compare("addresses on kube-ipvs0", slices.Clone(p.Set(setIPVSIPs).Entries), bound)

		for _, k := range []struct {
			kind ipvs.Kind
			sets []string
		}{
			{ipvs.KindClusterIP, []string{setClusterIP}},
			{ipvs.KindExternalIP, []string{setExternalIP, setExternalIPLocal}},
			{ipvs.KindLoadBalancer, []string{setLoadBalancer}},
		} {
			var got, fromIPVS []Entry
			for _, s := range k.sets {
				got = append(got, p.Set(s).Entries...)
			}
			for kk := range want {
				if kk.kind == k.kind && p.Family.Has(kk.e.IP) {
					fromIPVS = append(fromIPVS, kk.e)
				}
			}
			compare(k.kind.String()+" virtual servers", got, fromIPVS)
		}
	}
	return errors.Join(errs...)
}

func dumpServices(snap *servicecache.Snapshot) string {
	var out []string
	for _, svc := range snap.Services {
		out = append(out, svc.Dump())
	}
	return strings.Join(out, "")
}

func ipsetProto(p ipvs.Proto) Proto {
	switch p {
	case ipvs.ProtoTCP:
		return ProtoTCP
	case ipvs.ProtoUDP:
		return ProtoUDP
	case ipvs.ProtoSCTP:
		return ProtoSCTP
	}
	return 0
}

// apply applies d with do (Apply or ApplyIncremental) and checks that the
// fakes hold exactly it.
func (f *fakes) apply(t *testing.T, what string, do func(*Desired) (Changes, error), d *Desired) {
	t.Helper()
	if _, err := do(d); err != nil {
		t.Fatalf("%s: %v\nops: %q", what, err, f.mutations())
	}
	for _, p := range d.Families {
		for _, s := range p.Sets {
			got, err := f.ipset.ListEntries(s.Spec)
			if err != nil || !slices.Equal(got, s.Entries) {
				t.Fatalf("%s: %s holds %v (%v), want %v", what, s.Spec.Name, got, err, s.Entries)
			}
		}
		tables := f.tables[p.Family]
		for _, c := range p.Chains {
			if got, ok := tables.Chains[c.Table][c.Name]; !ok || !rulesEqual(got, c.Rules) {
				t.Fatalf("%s: %v %s/%s holds %q, want %q", what, p.Family, c.Table, c.Name, got, c.Rules)
			}
		}
		for _, j := range p.Jumps {
			if n := countFunc(tables.Chains[j.Table][j.From], j.Rule().Equal); n != 1 {
				t.Fatalf("%s: %v %s/%s has the jump to %s %d times", what, p.Family, j.Table, j.From, j.To, n)
			}
		}
	}
}

// idle applies d again with do and checks that nothing changes.
func (f *fakes) idle(t *testing.T, what string, do func(*Desired) (Changes, error), d *Desired) {
	t.Helper()
	f.resetOps()
	ch, err := do(d)
	if err != nil || !ch.Empty() {
		t.Fatalf("%s: %+v, %v", what, ch, err)
	}
	if m := f.mutations(); len(m) != 0 {
		t.Fatalf("%s changed: %q", what, m)
	}
}

func countFunc[T any](xs []T, f func(T) bool) int {
	n := 0
	for _, x := range xs {
		if f(x) {
			n++
		}
	}
	return n
}

// TestValidatePlanCatches makes sure ValidatePlan is not vacuous.
func TestValidatePlanCatches(t *testing.T) {
	snap := fullSnapshot()
	cfg := fullConfig()
	breakers := map[string]func(d *Desired){
		"wrong family entry": func(d *Desired) {
			s := d.Families[0].Set(setClusterIP)
			s.Entries = append(s.Entries, Entry{IP: ip("fd00::1"), Proto: ProtoTCP, Port: 80})
		},
		"unsorted entries": func(d *Desired) { s := d.Families[0].Set(setClusterIP); slices.Reverse(s.Entries) },
		"unspecified address": func(d *Desired) {
			s := d.Families[0].Set(setIPVSIPs)
			s.Entries = append([]Entry{{IP: netip.IPv4Unspecified()}}, s.Entries...)
		},
		"unknown set": func(d *Desired) {
			c := d.Families[1].Chain(TableNAT, chainServices)
			c.Rules = append(c.Rules, Rule{"-m", "set", "--match-set", setClusterIP, "dst,dst", "-j", "ACCEPT"})
		},
		"missing chain": func(d *Desired) {
			c := d.Families[0].Chain(TableFilter, chainForward)
			c.Rules = append(c.Rules, Rule{"-j", chainServices})
		},
		"missing family": func(d *Desired) { d.Families = d.Families[:1] },
	}
	for _, name := range slices.Sorted(maps.Keys(breakers)) {
		d := Plan(snap, cfg)
		if err := ValidatePlan(d, cfg); err != nil {
			t.Fatalf("valid plan rejected: %v", err)
		}
		breakers[name](d)
		if err := ValidatePlan(d, cfg); err == nil {
			t.Errorf("%s: not caught", name)
		}
	}
}

// withChanged is cur with Changed listing the Services that differ from
// prev, as the service cache reports them.
func withChanged(cur, prev *servicecache.Snapshot) *servicecache.Snapshot {
	byKey := map[servicecache.ServiceKey]*servicecache.Service{}
	for _, s := range prev.Services {
		byKey[s.Key] = s
	}
	out := *cur
	out.Changed = nil
	for _, s := range cur.Services {
		if p, ok := byKey[s.Key]; !ok || !p.Equal(s) {
			out.Changed = append(out.Changed, s.Key)
		}
		delete(byKey, s.Key)
	}
	for k := range byKey {
		out.Changed = append(out.Changed, k)
	}
	slices.SortFunc(out.Changed, servicecache.ServiceKey.Compare)
	return &out
}
