package bench

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

func TestPercentile(t *testing.T) {
	s := func(vs ...float64) []sample {
		var out []sample
		for _, v := range vs {
			out = append(out, sample{V: v})
		}
		return out
	}
	ten := s(10, 1, 2, 3, 4, 5, 6, 7, 8, 9)
	if got := percentile(ten, 50); got != val(5) {
		t.Errorf("p50 = %v", got)
	}
	if got := percentile(ten, 99); got != val(10) {
		t.Errorf("p99 = %v", got)
	}
	if got := percentile(s(3), 99); got != val(3) {
		t.Errorf("one sample: %v", got)
	}
	if got := percentile(nil, 50); got.Set {
		t.Errorf("no samples: %v", got)
	}
	// A change that never showed: the p99 is only known to be above the
	// timeout; the p50 is still a value.
	withBound := append(s(1, 2, 3), sample{V: 600, Above: true})
	if got := percentile(withBound, 99); !got.Above || got.V != 600 {
		t.Errorf("p99 with a bound = %v", got)
	}
	if got := percentile(withBound, 50); got != val(2) {
		t.Errorf("p50 with a bound = %v", got)
	}
}

func TestValueAndRatio(t *testing.T) {
	for _, c := range []struct {
		v    Value
		want string
	}{
		{val(0.01234), "0.012"}, {val(1.234), "1.23"}, {val(12.34), "12.3"}, {val(1234.5), "1234"},
		{val(0), "0"}, {timedOut(2400), ">2400 (timed out)"}, {missing("not run"), "not run"},
	} {
		if got := c.v.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.v, got, c.want)
		}
	}
	r := Row{Ours: val(2), Upstream: val(50)}
	if got := r.ratioString(); got != "25.0x" {
		t.Errorf("ratio %q", got)
	}
	r.Upstream = timedOut(2400)
	if got := r.ratioString(); got != ">1200x" {
		t.Errorf("bounded ratio %q", got)
	}
	r.Upstream = missing("not run")
	if got := r.ratioString(); got != "" {
		t.Errorf("no upstream: ratio %q", got)
	}
	r = Row{Ours: val(0), Upstream: val(3), NoRatio: true}
	if got := r.ratioString(); got != "" {
		t.Errorf("count row: ratio %q", got)
	}
}

func TestTables(t *testing.T) {
	rs := &Results{}
	rs.add(Row{Scenario: "b", N: 5000, Ours: val(2), Upstream: timedOut(100), Unit: "s"})
	rs.add(Row{Scenario: "a", N: 1000, Ours: val(1), Upstream: val(10), Floor: val(0.5), Unit: "s"})
	var md, csv bytes.Buffer
	rs.Markdown(&md)
	if err := rs.CSV(&csv); err != nil {
		t.Fatal(err)
	}
	wantMD := "| scenario | N | ours | upstream | upstream/ours | kernel floor | unit |\n" +
		"|---|---:|---:|---:|---:|---:|---|\n" +
		"| a | 1000 | 1.00 | 10.0 | 10.0x | 0.500 | s |\n" +
		"| b | 5000 | 2.00 | >100 (timed out) | >50.0x |  | s |\n"
	if md.String() != wantMD {
		t.Errorf("markdown:\n%s\nwant:\n%s", md.String(), wantMD)
	}
	wantCSV := "scenario,N,ours,upstream,ratio,kernel_floor,unit,note\n" +
		"a,1000,1.00,10.0,10.0,0.500,s,\n" +
		"b,5000,2.00,>100,>50.0,,s,upstream: timed out\n"
	if csv.String() != wantCSV {
		t.Errorf("csv:\n%s\nwant:\n%s", csv.String(), wantCSV)
	}
}

func TestAddresses(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for i := 0; i < 12000; i++ {
		for k := 0; k < 5; k++ {
			a := initialAddr(i, k, 5)
			if seen[a] || !netip.MustParsePrefix("10.244.0.0/16").Contains(a) || a.As4()[3] == 0 || a.As4()[3] == 255 {
				t.Fatalf("initialAddr(%d, %d) = %s: reused or out of range", i, k, a)
			}
			seen[a] = true
		}
	}
	p := &population{}
	for i := 0; i < 100000; i++ {
		a := p.freshAddr()
		if seen[a] || !netip.MustParsePrefix("10.244.0.0/14").Contains(a) || a.As4()[3] == 0 || a.As4()[3] == 255 {
			t.Fatalf("fresh address %d = %s: reused or out of range", i, a)
		}
		seen[a] = true
	}
}

func TestFloorInput(t *testing.T) {
	b := &bench{pop: &population{endpoints: 2, nodePortEvery: 2}}
	b.lab.APIPort = 16443
	for i := 0; i < 3; i++ {
		s := &svc{Name: svcName(i), IP: netip.AddrFrom4([4]byte{10, 96, 1, byte(i)})}
		if i%2 == 0 {
			s.NodePort = int32(30000 + i)
		}
		s.slice = endpointSlice(s.Name, []netip.Addr{initialAddr(i, 0, 2), initialAddr(i, 1, 2)})
		b.pop.svcs = append(b.pop.svcs, s)
	}
	in := b.floorInput(3)
	exp := b.expected(3)
	if got := strings.Count(in.ipvs, "-A "); got != exp.vs {
		t.Errorf("%d virtual servers, want %d:\n%s", got, exp.vs, in.ipvs)
	}
	if got := strings.Count(in.ipvs, "-a "); got != exp.rs {
		t.Errorf("%d real servers, want %d:\n%s", got, exp.rs, in.ipvs)
	}
	if got := strings.Count(in.batch, "address add"); got != 4 {
		t.Errorf("%d addresses, want 4:\n%s", got, in.batch)
	}
	for set, want := range exp.sets {
		if got := strings.Count(in.ipset, "add "+set+" "); got != want {
			t.Errorf("%s: %d entries, want %d", set, got, want)
		}
	}
	if !strings.Contains(in.ipvs, "-A -t 172.30.0.11:30002 -s rr\n") || !strings.Contains(in.ipvs, "-a -t 10.96.0.1:443 -r 10.0.2.100:16443 -m -w 1\n") {
		t.Errorf("ipvsadm table:\n%s", in.ipvs)
	}
}

func TestDefaultOptions(t *testing.T) {
	for _, k := range []string{"BENCH_SIZES", "BENCH_UPSTREAM_10K", "BENCH_PROXIES", "BENCH_SCENARIOS", "BENCH_TIMEOUT", "BENCH_OUT"} {
		t.Setenv(k, "")
	}
	o, err := DefaultOptions("/repo")
	if err != nil {
		t.Fatal(err)
	}
	if !o.runs("ours", 10000) || o.runs("upstream", 10000) || !o.runs("upstream", 5000) {
		t.Errorf("defaults: ours at 10k %v, upstream at 10k %v, at 5k %v", o.runs("ours", 10000), o.runs("upstream", 10000), o.runs("upstream", 5000))
	}
	if o.OutDir != "/repo/_output/bench" || o.Timeout.Seconds() != 2400 || len(o.Scenarios) != 6 {
		t.Errorf("defaults: %+v", o)
	}
	t.Setenv("BENCH_SIZES", "5000,1000,1000")
	t.Setenv("BENCH_UPSTREAM_10K", "1")
	t.Setenv("BENCH_SCENARIOS", "churn")
	if o, err = DefaultOptions("/repo"); err != nil {
		t.Fatal(err)
	}
	if len(o.Sizes) != 2 || o.Sizes[0] != 1000 || !o.runs("upstream", 10000) || !o.has(ScCold) || !o.has(ScChurn) || o.has(ScIdle) {
		t.Errorf("settings: %+v", o)
	}
	for k, v := range map[string]string{"BENCH_SIZES": "20000", "BENCH_PROXIES": "iptables", "BENCH_SCENARIOS": "warm", "BENCH_TIMEOUT": "-1"} {
		t.Run(k, func(t *testing.T) {
			t.Setenv(k, v)
			if _, err := DefaultOptions("/repo"); err == nil {
				t.Errorf("%s=%s: no error", k, v)
			}
		})
	}
}
