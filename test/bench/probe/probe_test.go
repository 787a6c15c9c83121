package probe

import (
	"fmt"
	"os"
	"testing"
)

func TestCountProcIPVS(t *testing.T) {
	text := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A600001:01BB rr
  -> 0A000264:4123      Masq    1      0          0
TCP  0A60A2C1:0050 rr
  -> 0AF40001:1F90      Masq    1      0          0
  -> 0AF40002:1F90      Masq    0      0          0
UDP  [FD00:0010:0096:0000:0000:0000:0000:000A]:0035 rr
TCP  AC1E000B:7A12 rr
  -> 0AF40001:1F90      Masq    1      0          0
`
	got := countProcIPVS([]byte(text))
	if want := (Counts{VS: 4, RS: 4}); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if got := countProcIPVS(nil); got != (Counts{}) {
		t.Fatalf("empty: got %+v", got)
	}
}

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses, as /proc allows.
	line := "1234 (kube (proxy) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 30 20 20 0 12 0 4200 1000000 2000 18446744073709551615\n"
	cpu, own, start, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if cpu != 3.5 || own != 3.0 || start != 42 {
		t.Fatalf("cpu %v own %v start %v, want 3.5 3 42", cpu, own, start)
	}
	if _, _, _, err := parseStat([]byte("1 (x) S 1 2")); err == nil {
		t.Fatal("short line: no error")
	}
}

func TestReadProcStatSelf(t *testing.T) {
	st, err := ReadProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.HWMKiB <= 0 || st.RSSKiB <= 0 || st.Age < 0 || st.Age > 3600 {
		t.Fatalf("implausible: %+v", st)
	}
	if !alive(os.Getpid()) {
		t.Fatal("alive(self) is false")
	}
}

func TestMetricValue(t *testing.T) {
	page := `# HELP kubeproxy_sync_proxy_rules_duration_seconds x
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"} 0
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv6"} 9
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 1.5
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 3
kubeproxy_sync_proxy_rules_last_timestamp_seconds_extra 7
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09
plain 4
`
	for _, c := range []struct {
		name, label string
		want        float64
		ok          bool
	}{
		{MetricSyncDurationSum, Family, 1.5, true},
		{MetricSyncDurationCount, Family, 3, true},
		{MetricLastSync, Family, 1.7e9, true},
		{"plain", "", 4, true},
		{"kubeproxy_missing", Family, 0, false},
		{MetricSyncDurationSum, `ip_family="IPv5"`, 0, false},
	} {
		got, ok := metricValue(page, c.name, c.label)
		if got != c.want || ok != c.ok {
			t.Errorf("%s %s: got %v %v, want %v %v", c.name, c.label, got, ok, c.want, c.ok)
		}
	}
}

func TestParseIpsetEntries(t *testing.T) {
	out := `Name: KUBE-CLUSTER-IP
Type: hash:ip,port
Revision: 6
Header: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
Size in memory: 6936
References: 2
Number of entries: 1201
`
	if got := parseIpsetEntries(out); got != 1201 {
		t.Fatalf("got %d", got)
	}
	if got := parseIpsetEntries("garbage"); got != -1 {
		t.Fatalf("garbage: got %d", got)
	}
}

func TestVSKey(t *testing.T) {
	s, err := VSKey("TCP/10.96.0.10:80").service()
	if err != nil || s.Port != 80 || s.Protocol != 6 || s.AddressFamily != 2 || s.Address.String() != "10.96.0.10" {
		t.Fatalf("got %+v, %v", s, err)
	}
	s, err = VSKey("UDP/[fd00::1]:53").service()
	if err != nil || s.AddressFamily != 10 || s.Protocol != 17 {
		t.Fatalf("IPv6: got %+v, %v", s, err)
	}
	for _, bad := range []string{"10.96.0.10:80", "ICMP/10.0.0.1:1", "TCP/10.0.0.1"} {
		if _, err := VSKey(bad).service(); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestScanProcIPVS(t *testing.T) {
	text := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A600102:0050 rr
  -> 0AF50001:1F90      Masq    1      0          0
  -> 0AF50002:1F90      Masq    0      0          0
TCP  0A600103:0050 rr
  -> 0AF50003:1F90      Masq    1      0          0
UDP  0A600102:0050 rr
  -> 0AF50004:1F90      Masq    1      0          0
`
	want := procWant{}
	add := func(vs VSKey, rs string, i int) {
		v, r, ok := procKeys(vs, rs)
		if !ok {
			t.Fatalf("procKeys(%s, %s) not ok", vs, rs)
		}
		if want[v] == nil {
			want[v] = map[string]int{}
		}
		want[v][r] = i
	}
	add("TCP/10.96.1.2:80", "10.245.0.1:8080", 0) // present
	add("TCP/10.96.1.2:80", "10.245.0.2:8080", 1) // weight 0
	add("TCP/10.96.1.2:80", "10.245.0.3:8080", 2) // under another virtual server
	add("TCP/10.96.1.2:80", "10.245.0.4:8080", 3) // under the UDP one
	add("TCP/10.96.1.3:80", "10.245.0.3:8080", 4) // present
	var seen []int
	scanProcIPVS([]byte(text), want, func(i int) { seen = append(seen, i) })
	if len(seen) != 2 || seen[0] != 0 || seen[1] != 4 {
		t.Fatalf("seen %v, want [0 4]", seen)
	}
	if _, _, ok := procKeys("TCP/[fd00::1]:80", "10.0.0.1:1"); ok {
		t.Fatal("IPv6 virtual server: ok")
	}
}

// procText is a /proc/net/ip_vs of n virtual servers with 5 real servers.
func procText(n int) []byte {
	var b []byte
	b = append(b, "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"...)
	for i := 0; i < n; i++ {
		b = fmt.Appendf(b, "TCP  0A60%04X:0050 rr\n", i)
		for k := 0; k < 5; k++ {
			b = fmt.Appendf(b, "  -> 0AF4%04X:1F90      Masq    1      0          0         \n", i*5+k)
		}
	}
	return b
}

func BenchmarkScanProcIPVS(b *testing.B) {
	text := procText(12000)
	want := procWant{}
	for i := 0; i < 100; i++ {
		v, r, _ := procKeys(VSKey(fmt.Sprintf("TCP/10.96.%d.%d:80", i/256, i%256)), fmt.Sprintf("10.244.%d.%d:8080", i*5/256, i*5%256))
		want[v] = map[string]int{r: i}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n := 0
		scanProcIPVS(text, want, func(int) { n++ })
		if n != 100 {
			b.Fatalf("seen %d", n)
		}
	}
}

func BenchmarkCountProcIPVS(b *testing.B) {
	text := procText(12000)
	for i := 0; i < b.N; i++ {
		countProcIPVS(text)
	}
}
