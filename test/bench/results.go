package bench

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Value is one measured figure, or why there is none.
type Value struct {
	V   float64
	Set bool
	// Above: the figure is more than V (a wait timed out at V).
	Above bool
	// Note explains a missing or bounded figure ("timed out", "not run").
	Note string
}

func val(v float64) Value          { return Value{V: v, Set: true} }
func timedOut(limit float64) Value { return Value{V: limit, Set: true, Above: true, Note: "timed out"} }
func missing(note string) Value    { return Value{Note: note} }
func valOrTimeout(ok bool, v, limit float64) Value {
	if ok {
		return val(v)
	}
	return timedOut(limit)
}

// String formats v with 3 significant digits.
func (v Value) String() string {
	if !v.Set {
		return v.Note
	}
	s := num(v.V)
	if v.Above {
		s = ">" + s
	}
	if v.Note != "" && v.Above {
		s += " (" + v.Note + ")"
	}
	return s
}

// csvString is String without the note of a bound.
func (v Value) csvString() string {
	if !v.Set {
		return ""
	}
	if v.Above {
		return ">" + num(v.V)
	}
	return num(v.V)
}

func num(f float64) string {
	switch a := math.Abs(f); {
	case a == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", f)
	case a >= 10:
		return fmt.Sprintf("%.1f", f)
	case a >= 1:
		return fmt.Sprintf("%.2f", f)
	case a >= 0.01:
		return fmt.Sprintf("%.3f", f)
	default:
		return fmt.Sprintf("%.4f", f)
	}
}

// Row is one line of the table.
type Row struct {
	Scenario string
	N        int
	Ours     Value
	Upstream Value
	Floor    Value
	Unit     string
	// NoRatio: the figure is not "lower is better" (counts).
	NoRatio bool
}

// Ratio is upstream/ours: how many times more upstream takes.
func (r Row) Ratio() Value {
	if r.NoRatio || !r.Ours.Set || !r.Upstream.Set || r.Ours.Above || r.Ours.V <= 0 {
		return Value{}
	}
	v := Value{V: r.Upstream.V / r.Ours.V, Set: true, Above: r.Upstream.Above}
	return v
}

func (r Row) ratioString() string {
	v := r.Ratio()
	if !v.Set {
		return ""
	}
	s := num(v.V) + "x"
	if v.Above {
		s = ">" + s
	}
	return s
}

// Results is the whole table with what it was measured on.
type Results struct {
	Rows []Row
	Meta []string // lines about the run (date, versions, sizes, duration)
}

func (rs *Results) add(r Row) { rs.Rows = append(rs.Rows, r) }

// sorted orders rows by size, keeping the order of scenarios within one.
func (rs *Results) sorted() []Row {
	out := append([]Row(nil), rs.Rows...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].N < out[j].N })
	return out
}

// Markdown writes the table.
func (rs *Results) Markdown(w io.Writer) {
	fmt.Fprintln(w, "| scenario | N | ours | upstream | upstream/ours | kernel floor | unit |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---|")
	for _, r := range rs.sorted() {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s |\n", r.Scenario, r.N, r.Ours, r.Upstream, r.ratioString(), r.Floor, r.Unit)
	}
}

// CSV writes the table: scenario, N, ours, upstream, ratio, kernel_floor,
// unit, note. A bound is written ">V".
func (rs *Results) CSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"scenario", "N", "ours", "upstream", "ratio", "kernel_floor", "unit", "note"})
	for _, r := range rs.sorted() {
		ratio := r.Ratio()
		rv := ratio.csvString()
		var notes []string
		for _, x := range []struct {
			who string
			v   Value
		}{{"ours", r.Ours}, {"upstream", r.Upstream}, {"floor", r.Floor}} {
			if x.v.Note != "" {
				notes = append(notes, x.who+": "+x.v.Note)
			}
		}
		cw.Write([]string{r.Scenario, fmt.Sprint(r.N), r.Ours.csvString(), r.Upstream.csvString(), rv, r.Floor.csvString(), r.Unit, strings.Join(notes, "; ")})
	}
	cw.Flush()
	return cw.Error()
}

// Write writes results.md and results.csv into dir.
func (rs *Results) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var md strings.Builder
	fmt.Fprintln(&md, "# kube-ipvs-proxy benchmark: ours against upstream kube-proxy (IPVS mode)")
	fmt.Fprintln(&md)
	for _, m := range rs.Meta {
		fmt.Fprintf(&md, "- %s\n", m)
	}
	fmt.Fprintln(&md)
	rs.Markdown(&md)
	fmt.Fprintln(&md)
	md.WriteString(legend)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "results.csv"))
	if err != nil {
		return err
	}
	if err := rs.CSV(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// legend says what each row measures (also in docs/benchmarks.md).
const legend = `What each row measures (all in the lab VM: a real kernel under qemu
software emulation, 2 vCPUs; compare the ratios, not the absolute times):

- **cold sync: kernel complete**: from the proxy's start in an empty network
  namespace until the first poll that finds every virtual server and real
  server, the ipsets KUBE-CLUSTER-IP, KUBE-IPVS-IPS and KUBE-NODE-PORT-TCP
  full and KUBE-SERVICES matching KUBE-CLUSTER-IP. The kernel floor is
  ` + "`ip -batch`" + ` (addresses) + ` + "`ipvsadm -R`" + ` + ` + "`ipset restore`" + ` of the same
  objects in a fresh namespace.
- **cold sync: IPVS complete**: the same, virtual and real servers only;
  floor: ` + "`ip -batch`" + ` + ` + "`ipvsadm -R`" + `.
- **cold sync: CPU**, **peak RSS**: the proxy's user+system CPU time (with
  its waited-for children, such as upstream's ` + "`ipset`" + ` processes) and VmHWM
  when the kernel was complete.
- **restart: first sync**: the proxy stopped (SIGTERM) and started again
  over the programmed kernel; time until it reports its first sync done
  (kubeproxy_sync_proxy_rules_last_timestamp_seconds), and its CPU until
  then. **restart: virtual servers missing** is the most found missing by
  the polls during the restart (0: traffic never lost its virtual server).
- **idle resync**: nothing changes; the mean duration of the periodic
  syncs as the proxy reports it (kubeproxy_sync_proxy_rules_duration_seconds,
  IPv4) and the proxy's CPU per sync period (its metrics scraped once a
  second to count the syncs).
- **change: ...**: one API write (an endpoint added to an EndpointSlice,
  that endpoint removed, a Service created with its endpoints already in
  place, that Service deleted), timed on the host from just before the
  write until the probe in the VM reports the kernel showing it (a real
  server with weight > 0; the real server gone or at weight 0; the virtual
  server with all its real servers; the virtual server gone). Writes are
  1.5-3.5 s apart, at random, so they fall anywhere in the proxies'
  sync cycles. p99 of a few samples is their maximum.
- **churn**: endpoint changes (one endpoint of a Service replaced by a new
  address) at a fixed rate, each timed from its write until the kernel
  shows the new real server; the proxy's CPU from the start until the last
  change showed (or the drain timeout).
- **kernel floor** rows: the kernel's own cost of the same objects, with
  the standard tools, in a fresh namespace, no proxy running.
`
