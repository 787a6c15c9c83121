package iptables

// Real-kernel tests: they run NetlinkIPSet and IptablesTables against the
// kernel, inside a fresh network namespace per test, and compare what
// `ipset save` and `iptables-save` print there with goldens. They need root
// and the ipset and iptables tools; without them they fail (CI provides
// both), they do not skip.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
	"github.com/vishvananda/netns"
)

// backendTools are the binaries each backend's tests run.
var backendTools = map[Backend][]string{
	BackendNFT:    {"iptables-nft", "iptables-nft-save", "iptables-nft-restore", "ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore"},
	BackendLegacy: {"iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy", "ip6tables-legacy-save", "ip6tables-legacy-restore"},
}

// requireKernel fails the test unless it can run against the kernel.
func requireKernel(t *testing.T, backend Backend) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("real-kernel test needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for network namespaces); run `go test` as root")
	}
	for _, tool := range append([]string{"ipset"}, backendTools[backend]...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("real-kernel test needs %s: install the Debian packages ipset and iptables (apt-get install -y ipset iptables): %v", tool, err)
		}
	}
}

// enterNewNetns moves the test goroutine's OS thread into a new network
// namespace. The thread stays locked: when the test goroutine ends (also
// through t.Fatal) the runtime destroys the thread and the namespace with
// it, so no other goroutine ever runs there. Processes started by the test
// inherit the namespace, and netlink sockets opened now live in it.
func enterNewNetns(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("creating network namespace: %v", err)
	}
	t.Cleanup(func() { _ = ns.Close() })
}

// run runs a command in the test's namespace and returns its stdout.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

var (
	// initval is random; this kernel computes bucketsize from the table's
	// current state, so neither is stable.
	hashParamsRE = regexp.MustCompile(` (bucketsize \d+|initval 0x[0-9a-f]+)`)
	countersRE   = regexp.MustCompile(`\[\d+:\d+\]`)
)

// ipsetSave returns `ipset save` without the unstable hash parameters and with each
// set's members sorted (hash sets list in hash order).
func ipsetSave(t *testing.T) string {
	t.Helper()
	var out []string
	var adds []string
	flush := func() {
		slices.Sort(adds)
		out = append(out, adds...)
		adds = nil
	}
	for _, line := range strings.Split(strings.TrimSpace(run(t, "ipset", "save")), "\n") {
		if strings.HasPrefix(line, "add ") {
			adds = append(adds, line)
			continue
		}
		flush()
		out = append(out, hashParamsRE.ReplaceAllString(line, ""))
	}
	flush()
	return strings.Join(out, "\n") + "\n"
}

// iptablesSave returns the nat and filter tables of both families without
// comments and counters.
func iptablesSave(t *testing.T, backend Backend) string {
	t.Helper()
	var sb strings.Builder
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"nat", "filter", "mangle"} {
			sb.WriteString("## " + bin + " -t " + table + "\n")
			text := run(t, bin+"-"+string(backend)+"-save", "-t", table)
			for _, line := range strings.Split(text, "\n") {
				if line == "" || strings.HasPrefix(line, "#") {
					continue
				}
				sb.WriteString(countersRE.ReplaceAllString(line, "[0:0]") + "\n")
			}
		}
	}
	return sb.String()
}

func kernelState(t *testing.T, backend Backend) string {
	return "## ipset save\n" + ipsetSave(t) + iptablesSave(t, backend)
}

// newRealApplier builds the real implementations in the current namespace.
func newRealApplier(t *testing.T, backend Backend) *Applier {
	t.Helper()
	set, err := NewNetlinkIPSet()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	a := &Applier{IPSet: set, Tables: map[Family]Tables{}}
	for _, f := range []Family{IPv4, IPv6} {
		tables, err := NewIptablesTables(f, backend)
		if err != nil {
			t.Fatal(err)
		}
		a.Tables[f] = tables
		if tables.NFTables() != (backend == BackendNFT) {
			t.Fatalf("%s: NFTables() = %v", backend, tables.NFTables())
		}
	}
	if backend == BackendNFT {
		g, err := NewNFTGeneration()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.Close)
		a.Generation = g.Get
	}
	return a
}

// countingTables counts the rule listings.
type countingTables struct {
	Tables
	lists *int
}

func (c countingTables) ListTables(tables []Table) (map[Table]map[string][]Rule, error) {
	*c.lists++
	return c.Tables.ListTables(tables)
}

// With iptables-nft, a full apply lists the rules only when the nftables
// generation moved since the last full apply that found them in place:
// any rule change, ours or another tool's, moves it.
func TestKernelGenerationSkipsListing(t *testing.T) {
	const backend = BackendNFT
	requireKernel(t, backend)
	enterNewNetns(t)
	a := newRealApplier(t, backend)
	lists := 0
	for f, tables := range a.Tables {
		a.Tables[f] = countingTables{Tables: tables, lists: &lists}
	}
	desired := Plan(fullSnapshot(), fullConfig())
	ipt := "iptables-" + string(backend)
	for i, step := range []struct {
		name      string
		before    func()
		wantLists int
		wantEmpty bool
	}{
		{"first apply writes the rules", nil, 2, false},
		{"the generation moved (our writes): listed again", nil, 2, true},
		{"nothing moved: not listed", nil, 0, true},
		{"nothing moved, still not listed", func() { run(t, ipt+"-save") }, 0, true},
		{"another tool's rule: listed", func() { run(t, ipt, "-t", "filter", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT") }, 2, true},
		{"then quiet again", nil, 0, true},
		{"our chain flushed: listed and repaired", func() { run(t, ipt, "-t", "nat", "-F", "KUBE-SERVICES") }, 2, false},
		{"the repair moved it: listed once more", nil, 2, true},
		{"quiet", nil, 0, true},
	} {
		if step.before != nil {
			step.before()
		}
		lists = 0
		ch, err := a.Apply(desired)
		if err != nil {
			t.Fatalf("step %d (%s): %v", i, step.name, err)
		}
		if lists != step.wantLists || ch.Empty() != step.wantEmpty {
			t.Errorf("step %d (%s): %d listings, changes %+v; want %d listings, empty %v", i, step.name, lists, ch, step.wantLists, step.wantEmpty)
		}
	}
}

// addForeign creates state that is not ours: a set, a KUBE- chain that
// kubelet owns, and rules in built-in chains. None of it may change.
func addForeign(t *testing.T, backend Backend) {
	t.Helper()
	ipt := "iptables-" + string(backend)
	run(t, "ipset", "create", "FOREIGN-SET", "hash:ip")
	run(t, "ipset", "add", "FOREIGN-SET", "192.0.2.99")
	run(t, ipt, "-t", "filter", "-N", "KUBE-FIREWALL")
	run(t, ipt, "-t", "filter", "-A", "KUBE-FIREWALL", "-m", "mark", "--mark", "0x8000/0x8000", "-j", "DROP")
	run(t, ipt, "-t", "filter", "-A", "INPUT", "-j", "KUBE-FIREWALL")
	run(t, ipt, "-t", "nat", "-A", "POSTROUTING", "-s", "10.0.0.0/8", "-j", "MASQUERADE")
}

func TestKernelApply(t *testing.T) {
	for _, backend := range []Backend{BackendNFT, BackendLegacy} {
		t.Run(string(backend), func(t *testing.T) {
			requireKernel(t, backend)
			enterNewNetns(t)
			addForeign(t, backend)
			a := newRealApplier(t, backend)
			desired := Plan(fullSnapshot(), fullConfig())
			if len(desired.Problems) > 0 {
				t.Fatalf("fixture has problems: %v", desired.Problems)
			}

			ch, err := a.Apply(desired)
			if err != nil {
				t.Fatalf("first apply: %v", err)
			}
			if ch.Empty() {
				t.Fatal("first apply changed nothing")
			}
			first := kernelState(t, backend)
			checkGolden(t, "kernel/apply.golden", first)

			// Idempotence: nothing to do, nothing rewritten.
			ch, err = a.Apply(desired)
			if err != nil {
				t.Fatalf("second apply: %v", err)
			}
			if !ch.Empty() {
				t.Fatalf("second apply changed %+v", ch)
			}
			if again := kernelState(t, backend); again != first {
				t.Fatalf("state changed on second apply:\n%s", lineDiff(first, again))
			}

			// Repair: a flushed chain, a lost jump, a stale and a lost entry.
			ipt := "iptables-" + string(backend)
			run(t, ipt, "-t", "nat", "-F", "KUBE-SERVICES")
			run(t, ipt, "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES")
			run(t, "ipset", "add", "KUBE-CLUSTER-IP", "10.96.9.9,tcp:9")
			run(t, "ipset", "del", "KUBE-6-NODE-PORT-TCP", "30080")
			ch, err = a.Apply(desired)
			if err != nil {
				t.Fatalf("repairing apply: %v", err)
			}
			want := Changes{EntriesAdded: 1, EntriesDeleted: 1,
				ChainsWritten: []string{"IPv4 nat/KUBE-SERVICES"},
				JumpsInserted: []string{"IPv4 nat/PREROUTING -> KUBE-SERVICES"}}
			if fmt.Sprint(ch) != fmt.Sprint(want) {
				t.Errorf("repair changes = %+v, want %+v", ch, want)
			}
			if again := kernelState(t, backend); again != first {
				t.Fatalf("state after repair differs:\n%s", lineDiff(first, again))
			}

			// Cleanup leaves only what is not ours.
			if err := a.Cleanup([]Family{IPv4, IPv6}); err != nil {
				t.Fatalf("cleanup: %v", err)
			}
			checkGolden(t, "kernel/cleanup.golden", kernelState(t, backend))
		})
	}
}

// TestKernelUpdate applies a plan, then a smaller one, and checks stale
// entries and rules go while everything else stays.
func TestKernelUpdate(t *testing.T) {
	const backend = BackendNFT
	requireKernel(t, backend)
	enterNewNetns(t)
	a := newRealApplier(t, backend)
	if _, err := a.Apply(Plan(fullSnapshot(), fullConfig())); err != nil {
		t.Fatalf("apply: %v", err)
	}
	snap := fullSnapshot()
	snap.Services = slices.DeleteFunc(snap.Services, func(s *servicecache.Service) bool { return s.Key.Name != "dns" })
	desired := Plan(snap, fullConfig())
	if _, err := a.Apply(desired); err != nil {
		t.Fatalf("apply smaller plan: %v", err)
	}
	checkGolden(t, "kernel/update.golden", kernelState(t, backend))
	if ch, err := a.Apply(desired); err != nil || !ch.Empty() {
		t.Fatalf("re-apply: changes %+v, err %v", ch, err)
	}
}

// TestKernelLargeSet adds enough members that the kernel splits the dump
// over several netlink messages, and checks they all read back.
func TestKernelLargeSet(t *testing.T) {
	const backend = BackendNFT
	requireKernel(t, backend)
	enterNewNetns(t)
	a := newRealApplier(t, backend)
	snap := largeSnapshot(3000)
	desired := Plan(snap, fullConfig())
	ch, err := a.Apply(desired)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	// Per service: a cluster IP entry in KUBE-CLUSTER-IP, its address in
	// KUBE-IPVS-IPS, a loopback entry and a NodePort, for both families;
	// plus the configuration's marks.
	if want := 3000*4*2 + len(fullConfig().ExternalLocalMarks); ch.EntriesAdded != want {
		t.Errorf("added %d entries, want %d", ch.EntriesAdded, want)
	}
	got, err := a.IPSet.ListEntries(desired.Families[0].Set(setClusterIP).Spec)
	if err != nil || len(got) != 3000 {
		t.Fatalf("listed %d entries (err %v), want 3000", len(got), err)
	}
	if ch, err := a.Apply(desired); err != nil || !ch.Empty() {
		t.Fatalf("re-apply: changes %+v, err %v", ch, err)
	}
}

// TestKernelRefusesForeign checks the real implementations will not touch
// sets and chains that are not ours, and report a set of ours that exists
// with another type.
func TestKernelRefusesForeign(t *testing.T) {
	const backend = BackendNFT
	requireKernel(t, backend)
	enterNewNetns(t)
	addForeign(t, backend)
	a := newRealApplier(t, backend)
	before := kernelState(t, backend)
	if err := a.IPSet.DestroySet("FOREIGN-SET"); err == nil {
		t.Error("destroying FOREIGN-SET succeeded")
	}
	if err := a.IPSet.AddEntries(SetSpec{Name: "FOREIGN-SET", Type: HashIP, Family: IPv4}, []Entry{{IP: ip("192.0.2.1")}}); err == nil {
		t.Error("adding to FOREIGN-SET succeeded")
	}
	if err := a.Tables[IPv4].DeleteChains(TableFilter, []string{"KUBE-FIREWALL"}); err == nil {
		t.Error("deleting KUBE-FIREWALL succeeded")
	}
	if err := a.Tables[IPv4].ReplaceChains([]Chain{{Table: TableFilter, Name: "KUBE-FIREWALL"}}); err == nil {
		t.Error("replacing KUBE-FIREWALL succeeded")
	}
	if after := kernelState(t, backend); after != before {
		t.Fatalf("foreign state changed:\n%s", lineDiff(before, after))
	}

	run(t, "ipset", "create", "KUBE-CLUSTER-IP", "hash:ip")
	_, err := a.Apply(Plan(fullSnapshot(), fullConfig()))
	if err == nil || !strings.Contains(err.Error(), "KUBE-CLUSTER-IP") {
		t.Fatalf("apply with a mistyped KUBE-CLUSTER-IP: err = %v, want an error naming the set", err)
	}
}

// upstreamState is what upstream kube-proxy (IPVS mode, v1.37) creates for
// one ClusterIP+NodePort service with a local endpoint, written the way
// upstream writes it: the ipset commands of its ipset util, the
// iptables-restore text of writeIptablesRules (with --or-mark, --xor-mark,
// "! -s" after the set match, REJECT without --reject-with) and the
// EnsureRule(Prepend) jumps.
const upstreamIPSets = `create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
create KUBE-EXTERNAL-IP hash:ip,port family inet hashsize 1024 maxelem 65536
create KUBE-EXTERNAL-IP-LOCAL hash:ip,port family inet hashsize 1024 maxelem 65536
create KUBE-LOAD-BALANCER hash:ip,port family inet hashsize 1024 maxelem 65536
create KUBE-LOAD-BALANCER-FW hash:ip,port family inet hashsize 1024 maxelem 65536
create KUBE-LOAD-BALANCER-LOCAL hash:ip,port family inet hashsize 1024 maxelem 65536
create KUBE-LOAD-BALANCER-SOURCE-IP hash:ip,port,ip family inet hashsize 1024 maxelem 65536
create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
create KUBE-NODE-PORT-LOCAL-TCP bitmap:port range 0-65535
create KUBE-NODE-PORT-UDP bitmap:port range 0-65535
create KUBE-NODE-PORT-LOCAL-UDP bitmap:port range 0-65535
create KUBE-NODE-PORT-SCTP-HASH hash:ip,port family inet hashsize 1024 maxelem 65536
create KUBE-NODE-PORT-LOCAL-SCTP-HASH hash:ip,port family inet hashsize 1024 maxelem 65536
create KUBE-HEALTH-CHECK-NODE-PORT bitmap:port range 0-65535
create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536
add KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5
add KUBE-CLUSTER-IP 10.96.0.10,tcp:80
add KUBE-NODE-PORT-TCP 30080
add KUBE-IPVS-IPS 10.96.0.10
`

const upstreamRules = `*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x004000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
-A KUBE-SOURCE-RANGES-FIREWALL -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x004000/0x004000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT
COMMIT
`

// TestKernelMatchesUpstream sets the kernel up as upstream would, then
// applies our plan for the same service: nothing may need changing, which
// shows our names, set types and rules are upstream's.
func TestKernelMatchesUpstream(t *testing.T) {
	for _, backend := range []Backend{BackendNFT, BackendLegacy} {
		t.Run(string(backend), func(t *testing.T) {
			requireKernel(t, backend)
			enterNewNetns(t)
			ipset := exec.Command("ipset", "restore", "-exist")
			ipset.Stdin = strings.NewReader(upstreamIPSets)
			if out, err := ipset.CombinedOutput(); err != nil {
				t.Fatalf("ipset restore: %v: %s", err, out)
			}
			restore := exec.Command("iptables-"+string(backend)+"-restore", "--noflush")
			restore.Stdin = strings.NewReader(upstreamRules)
			if out, err := restore.CombinedOutput(); err != nil {
				t.Fatalf("iptables-restore: %v: %s", err, out)
			}
			// Plus what is ours alone (externalTrafficPolicy: Local
			// from inside the cluster), empty for this Service.
			run(t, "ipset", "create", setExternalLocalMark, "hash:ip,port", "family", "inet", "hashsize", "1024", "maxelem", "65536", "skbinfo")
			run(t, "iptables-"+string(backend), "-t", "mangle", "-N", chainExternalLocalMark)
			for _, j := range Jumps {
				run(t, "iptables-"+string(backend), append([]string{"-t", string(j.Table), "-I", j.From}, j.Rule()...)...)
			}

			snap := singleService(&servicecache.Service{
				Key: svcKey("web"), ClusterIPs: ips("10.96.0.10"),
				Ports: []servicecache.ServicePort{{Name: "http", Protocol: "TCP", Port: 80, NodePort: 30080,
					Endpoints: []servicecache.Endpoint{ep("10.244.1.5", 8080, "node-a")}}},
			})
			cfg := Config{Families: []Family{IPv4}, ClusterCIDRs: pfxs("10.244.0.0/16"), LocalAddresses: ips("192.168.10.5"), NodePortIPs: ips("192.168.10.5")}
			a := newRealApplier(t, backend)
			ch, err := a.Apply(Plan(snap, cfg))
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if !ch.Empty() {
				t.Fatalf("upstream's state needed changes: %+v", ch)
			}
		})
	}
}

// TestKernelSkbMark: the kernel keeps one skbmark per address and port,
// which an apply rewrites in place when the mark changes (an add -exist,
// no delete), and a removed address goes.
func TestKernelSkbMark(t *testing.T) {
	const backend = BackendNFT
	requireKernel(t, backend)
	enterNewNetns(t)
	a := newRealApplier(t, backend)
	cfg := fullConfig()
	if _, err := a.Apply(Plan(fullSnapshot(), cfg)); err != nil {
		t.Fatalf("apply: %v", err)
	}
	cfg.ExternalLocalMarks = []Entry{
		{IP: ips("192.0.2.50")[0], Proto: ProtoTCP, Port: 80, SkbMark: 0x20000, SkbMarkMask: 0x3fff0000},
	}
	desired := Plan(fullSnapshot(), cfg)
	ch, err := a.Apply(desired)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if ch.EntriesAdded != 1 || ch.EntriesDeleted != 2 {
		t.Errorf("added %d, deleted %d; want 1 (the new mark) and 2 (the other families' entries)", ch.EntriesAdded, ch.EntriesDeleted)
	}
	spec := desired.Families[0].Set(setExternalLocalMark).Spec
	got, err := a.IPSet.ListEntries(spec)
	if err != nil || len(got) != 1 || got[0] != cfg.ExternalLocalMarks[0] {
		t.Fatalf("listed %v, %v; want %v", got, err, cfg.ExternalLocalMarks)
	}
	if save := run(t, "ipset", "save", spec.Name); !strings.Contains(save, "add KUBE-EXTERNAL-LOCAL-MARK 192.0.2.50,tcp:80 skbmark 0x20000/0x3fff0000") {
		t.Errorf("ipset save:\n%s", save)
	}
	if ch, err := a.Apply(desired); err != nil || !ch.Empty() {
		t.Fatalf("re-apply: changes %+v, err %v", ch, err)
	}
}
