package inspect

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
)

// Column headers: ipvsadm -Ln's two lines, then the column this report
// adds.
const (
	headerVS      = "Prot LocalAddress:Port Scheduler Flags"
	headerRS      = "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"
	headerService = "Service"
	headerPod     = "Pod"
)

// Text words for what has no owner or endpoint.
const (
	NotAService   = "(not a Service)"
	NotAnEndpoint = "(not an endpoint)"
	NoTargetRef   = "(no targetRef)"
)

// WriteText writes r as `ipvsadm -Ln` prints the table (without its
// version line), each line followed, in one aligned column, by what it is:
//
//	Prot LocalAddress:Port Scheduler Flags                                 Service
//	  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn  Pod
//	TCP  10.96.0.10:80 rr                                                  default/web:http (ClusterIP)
//	  -> 10.244.1.2:8080              Masq    1      2          5          default/web-7f9c-1
//	  -> 10.244.2.2:8080              Masq    0      1          3          default/web-7f9c-2 [draining,terminating]
//	TCP  172.16.0.1:8080 wlc persistent 300                                (not a Service)
//	  -> 10.0.0.5:8080                Route   3      0          0
//
// A virtual server no Service owns says NotAService; a real server of an
// owned virtual server that is none of its owners' endpoints says
// NotAnEndpoint, an endpoint without a targetRef NoTargetRef. A real server
// at weight 0 is marked [draining]; one whose endpoint is terminating or not
// ready says so in the same brackets. A kernel-only report has no column
// but the [draining] marks.
func WriteText(w io.Writer, r *Report) error {
	type line struct{ left, right string }
	lines := make([]line, 0, 2+len(r.VirtualServers)*4)
	if r.KernelOnly {
		lines = append(lines, line{headerVS, ""}, line{headerRS, ""})
	} else {
		lines = append(lines, line{headerVS, headerService}, line{headerRS, headerPod})
	}
	for i := range r.VirtualServers {
		vs := &r.VirtualServers[i]
		lines = append(lines, line{vsText(&vs.VirtualServer), ownersText(r.KernelOnly, vs.Owners)})
		for _, rs := range vs.RealServers {
			lines = append(lines, line{rsText(rs.DestStats), rsNote(r.KernelOnly || len(vs.Owners) == 0, rs)})
		}
	}

	width := 0
	for _, l := range lines {
		if l.right != "" {
			width = max(width, len(l.left))
		}
	}
	width += 2
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.left)
		if l.right != "" {
			b.WriteString(strings.Repeat(" ", width-len(l.left)))
			b.WriteString(l.right)
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// vsText is ipvsadm's service line: "TCP  10.96.0.10:80 rr", then
// "(sh-fallback,sh-port)", "persistent 10800" and "ops" as they apply.
func vsText(vs *VirtualServer) string {
	var b strings.Builder
	b.WriteString(vs.Key.Proto.String())
	b.WriteString("  ")
	b.WriteString(netip.AddrPortFrom(vs.Key.Addr, vs.Key.Port).String())
	b.WriteByte(' ')
	b.WriteString(vs.Scheduler)
	if names := schedFlagNames(vs.Scheduler, vs.Flags); len(names) > 0 {
		b.WriteString(" (" + strings.Join(names, ",") + ")")
	}
	if vs.Flags&ipvs.FlagPersistent != 0 {
		b.WriteString(" persistent " + strconv.FormatUint(uint64(vs.Timeout), 10))
	}
	if vs.Flags&ipvs.FlagOnePacket != 0 {
		b.WriteString(" ops")
	}
	if rest := otherFlags(vs.Flags); rest != 0 {
		// Not something ipvsadm prints; shown so that nothing is hidden.
		b.WriteString(" flags 0x" + strconv.FormatUint(uint64(rest), 16))
	}
	return b.String()
}

// rsText is ipvsadm's real server line.
func rsText(d ipvs.DestStats) string {
	return strings.TrimRight(fmt.Sprintf("  -> %-28s %-7s %-6d %-10d %d",
		d.Key.String(), forwardName(d.Forward), d.Weight, d.ActiveConns, d.InactiveConns), " ")
}

func ownersText(kernelOnly bool, owners []Owner) string {
	if kernelOnly {
		return ""
	}
	if len(owners) == 0 {
		return NotAService
	}
	parts := make([]string, len(owners))
	for i, o := range owners {
		parts[i] = o.String() + " (" + o.Kind.String() + ")"
	}
	return strings.Join(parts, ", ")
}

// rsNote names the endpoint (unless bare, for kernel-only reports and
// virtual servers of no Service) and adds the marks.
func rsNote(bare bool, rs RealServerReport) string {
	var name string
	if !bare {
		switch {
		case rs.Endpoint == nil:
			name = NotAnEndpoint
		case rs.Endpoint.TargetRef == nil:
			name = NoTargetRef
		default:
			name = rs.Endpoint.TargetRef.String()
		}
	}
	marks := rsMarks(rs)
	if len(marks) == 0 {
		return name
	}
	m := "[" + strings.Join(marks, ",") + "]"
	if name == "" {
		return m
	}
	return name + " " + m
}

// rsMarks are "draining" (weight 0), then "terminating" or "not ready"
// from the endpoint's conditions.
func rsMarks(rs RealServerReport) []string {
	var marks []string
	if rs.Draining() {
		marks = append(marks, "draining")
	}
	if ep := rs.Endpoint; ep != nil {
		switch {
		case ep.Terminating:
			marks = append(marks, "terminating")
		case !ep.Ready:
			marks = append(marks, "not ready")
		}
	}
	return marks
}

// forwardName is ipvsadm's Forward column.
func forwardName(f ipvs.Forward) string {
	switch f {
	case ipvs.ForwardMasq:
		return "Masq"
	case ipvs.ForwardTunnel:
		return "Tunnel"
	case ipvs.ForwardRoute:
		return "Route"
	}
	return "fwd-" + strconv.FormatUint(uint64(f), 10)
}

// schedFlagNames are ipvsadm's names of the scheduler flags set in f.
func schedFlagNames(sched string, f ipvs.Flags) []string {
	names := [3]string{"flag-1", "flag-2", "flag-3"}
	switch sched {
	case "sh":
		names = [3]string{"sh-fallback", "sh-port", "flag-3"}
	case "mh":
		names = [3]string{"mh-fallback", "mh-port", "flag-3"}
	}
	var out []string
	for i, bit := range [3]ipvs.Flags{ipvs.FlagSched1, ipvs.FlagSched2, ipvs.FlagSched3} {
		if f&bit != 0 {
			out = append(out, names[i])
		}
	}
	return out
}

// otherFlags are the flags ipvsadm has no word for.
func otherFlags(f ipvs.Flags) ipvs.Flags {
	return f &^ (ipvs.FlagPersistent | ipvs.FlagHashed | ipvs.FlagOnePacket | ipvs.FlagSched1 | ipvs.FlagSched2 | ipvs.FlagSched3)
}
