package diff

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestCompare(t *testing.T) {
	tests := []struct {
		name     string
		up, ours Dump
		want     []Difference
	}{
		{name: "equal", up: Dump{"ipvs": {"a", "b"}}, ours: Dump{"ipvs": {"a", "b"}}},
		{name: "both empty", up: Dump{}, ours: Dump{"ipset": nil}},
		{
			name: "one extra line does not shift the rest",
			up:   Dump{"iptables": {"r1", "r2", "r3", "r4"}},
			ours: Dump{"iptables": {"r1", "rX", "r2", "r3", "r4"}},
			want: []Difference{{Node: "n", Section: "iptables", Ours: []string{"rX"}}},
		},
		{
			name: "changed line is one hunk with both sides",
			up:   Dump{"ipvs": {"a", "b -w 1", "c"}},
			ours: Dump{"ipvs": {"a", "b -w 0", "c"}},
			want: []Difference{{Node: "n", Section: "ipvs", Upstream: []string{"b -w 1"}, Ours: []string{"b -w 0"}}},
		},
		{
			name: "order inside a chain counts",
			up:   Dump{"iptables": {"x", "y"}},
			ours: Dump{"iptables": {"y", "x"}},
			want: []Difference{
				{Node: "n", Section: "iptables", Ours: []string{"y"}},
				{Node: "n", Section: "iptables", Upstream: []string{"y"}},
			},
		},
		{
			name: "separate hunks per section",
			up:   Dump{"ipvs": {"a"}, "sysctl": {"k = 1"}},
			ours: Dump{"ipvs": {}, "sysctl": {"k = 0"}},
			want: []Difference{
				{Node: "n", Section: "ipvs", Upstream: []string{"a"}},
				{Node: "n", Section: "sysctl", Upstream: []string{"k = 1"}, Ours: []string{"k = 0"}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Compare("n", tt.up, tt.ours)
			if len(got) == 0 && len(tt.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

const testAllowlist = `
entries:
  - id: fallback
    section: ipvs
    upstream: 'local=0$'
    reason: r
    e2e: TestX
  - id: renamed
    section: ipset
    upstream: '^add OLD '
    ours: '^add NEW '
    reason: r
    e2e: TestY
  - id: node1-only
    section: addr
    node: node1
    ours: '^addr 172\.30\.0\.11/32'
    reason: r
    e2e: TestZ
`

func TestClassify(t *testing.T) {
	al, err := ParseAllowlist([]byte(testAllowlist))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		d    Difference
		want []string
	}{
		{"matched on the upstream side", Difference{Node: "node2", Section: "ipvs", Upstream: []string{"-a x # local=0", "-a y # local=0"}}, []string{"fallback"}},
		{"a line the entry does not match", Difference{Node: "node2", Section: "ipvs", Upstream: []string{"-a x # local=0", "-a y # local=1"}}, nil},
		{"the entry has no matcher for that side", Difference{Node: "node2", Section: "ipvs", Ours: []string{"-a x # local=0"}}, nil},
		{"wrong section", Difference{Node: "node2", Section: "ipset", Upstream: []string{"x local=0"}}, nil},
		{"both sides", Difference{Node: "node2", Section: "ipset", Upstream: []string{"add OLD 1"}, Ours: []string{"add NEW 1"}}, []string{"renamed"}},
		{"node matches", Difference{Node: "node1", Section: "addr", Ours: []string{"addr 172.30.0.11/32 scope global"}}, []string{"node1-only"}},
		{"other node", Difference{Node: "node2", Section: "addr", Ours: []string{"addr 172.30.0.11/32 scope global"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds := []Difference{tt.d}
			al.Classify(ds)
			if !reflect.DeepEqual(ds[0].Allowed, tt.want) {
				t.Errorf("allowed %v, want %v", ds[0].Allowed, tt.want)
			}
		})
	}
	ds := []Difference{{Node: "node2", Section: "ipvs", Upstream: []string{"a local=0"}}, {Node: "node1", Section: "sysctl", Ours: []string{"k = 1"}}}
	al.Classify(ds)
	if n := Unexplained(ds); n != 1 {
		t.Errorf("Unexplained = %d, want 1", n)
	}
	rep := Report(ds, "SEED=7 ROUNDS=1 make diff-upstream")
	for _, want := range []string{"allowed (fallback): node2 ipvs [SEED=7 ROUNDS=1", "  - upstream: a local=0", "UNEXPLAINED: node1 sysctl", "  + ours:     k = 1"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
}

func TestParseAllowlistRejects(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"no id", "entries:\n- section: ipvs\n  ours: x\n  reason: r\n  e2e: T\n", "no id"},
		{"unknown section", "entries:\n- id: a\n  section: nat\n  ours: x\n  reason: r\n  e2e: T\n", "section"},
		{"no matcher", "entries:\n- id: a\n  section: ipvs\n  reason: r\n  e2e: T\n", "no matcher"},
		{"no e2e", "entries:\n- id: a\n  section: ipvs\n  ours: x\n  reason: r\n", "required"},
		{"bad regexp", "entries:\n- id: a\n  section: ipvs\n  ours: '('\n  reason: r\n  e2e: T\n", "ours"},
		{"id twice", "entries:\n- {id: a, section: ipvs, ours: x, reason: r, e2e: T}\n- {id: a, section: ipvs, ours: y, reason: r, e2e: T}\n", "twice"},
		{"unknown field", "entries:\n- {id: a, section: ipvs, ours: x, reason: r, e2e: T, when: y}\n", "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAllowlist([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one with %q", err, tt.want)
			}
		})
	}
}

// TestRepositoryAllowlist loads docs/fidelity-allowlist.yaml: it must parse
// and name an e2e case that exists.
func TestRepositoryAllowlist(t *testing.T) {
	al, err := LoadAllowlist(filepath.Join("..", "..", "docs", "fidelity-allowlist.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var e2e strings.Builder
	files, _ := filepath.Glob(filepath.Join("..", "e2e", "*_test.go"))
	for _, f := range files {
		buf, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		e2e.Write(buf)
	}
	for _, e := range al.Entries {
		for _, c := range strings.Split(e.E2E, ",") {
			c = strings.TrimSpace(strings.SplitN(c, "/", 2)[0])
			if !strings.Contains(e2e.String(), "func "+c+"(") {
				t.Errorf("entry %s: no e2e case %s in test/e2e", e.ID, c)
			}
		}
	}
}

// TestRepositoryAllowlistMatches pins what the seeded entries explain, and
// that they explain nothing else of the same kind.
func TestRepositoryAllowlistMatches(t *testing.T) {
	al, err := LoadAllowlist(filepath.Join("..", "..", "docs", "fidelity-allowlist.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		d    Difference
		want []string
	}{
		{Difference{Node: "node2", Section: "ipvs", Upstream: []string{"-a -t 172.30.0.12:30080 -r 10.244.1.5:8000 -m -w 1 # svc=s/p0 kind=nodeport etp=Local itp=Cluster local=0"}}, []string{"etp-local-no-fallback"}},
		{Difference{Node: "node2", Section: "ipvs", Upstream: []string{"-a --sctp-service 198.51.100.141:443 -r 10.244.1.108:8000 -m -w 1 # svc=s/p0 kind=lb etp=Local itp=Cluster local=0 src=unset"}}, []string{"etp-local-no-fallback"}},
		{Difference{Node: "node2", Section: "ipvs", Upstream: []string{"-a -t 172.30.0.12:30080 -r 10.244.1.5:8000 -m -w 1 # svc=s/p0 kind=nodeport etp=Local itp=Cluster local=1"}}, nil},
		{Difference{Node: "node1", Section: "ipvs", Upstream: []string{"-a -t 10.96.3.4:80 -r 10.244.2.5:8000 -m -w 1 # svc=s/p0 kind=cluster etp=Cluster itp=Local local=0"}}, []string{"itp-local-no-fallback"}},
		{Difference{Node: "node1", Section: "ipvs", Ours: []string{"-A -f 1073807360 -s rr", "-a -f 1073807360 -r 10.244.2.5:0 -m -w 1"}}, []string{"etp-local-inside-fwmark-ipvs"}},
		{Difference{Node: "node1", Section: "ipset", Ours: []string{"create KUBE-6-EXTERNAL-LOCAL-MARK hash:ip,port family inet6 hashsize 1024 maxelem 65536 skbinfo"}}, []string{"etp-local-inside-ipset"}},
		{Difference{Node: "node1", Section: "iptables", Ours: []string{"*mangle :KUBE-EXTERNAL-LOCAL-MARK -", "*mangle :PREROUTING ACCEPT", "*mangle -A PREROUTING -m comment -j KUBE-EXTERNAL-LOCAL-MARK"}}, []string{"etp-local-inside-iptables"}},
		{Difference{Node: "node1", Section: "iptables", Ours: []string{"*nat -A KUBE-SERVICES -j KUBE-EXTERNAL-LOCAL-MARK"}}, nil},
		{Difference{Node: "node1", Section: "ipvs", Upstream: []string{"-A -t 172.30.0.11:80 -s rr # svc=s/p0 kind=external etp=Cluster itp=Cluster local=0"}}, []string{"external-ip-is-node-address-ipvs"}},
		{Difference{Node: "node2", Section: "ipvs", Upstream: []string{"-A -t 172.30.0.11:80 -s rr # svc=s/p0 kind=external etp=Cluster itp=Cluster local=0"}}, nil},
	}
	for _, tt := range tests {
		ds := []Difference{tt.d}
		al.Classify(ds)
		if !reflect.DeepEqual(ds[0].Allowed, tt.want) {
			t.Errorf("%+v: allowed %v, want %v", tt.d, ds[0].Allowed, tt.want)
		}
	}
}
