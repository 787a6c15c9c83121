package diff

import (
	"cmp"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
)

// Sections of a node's dump, in the order they are printed.
var Sections = []string{"ipvs", "ipvs-timeouts", "ipset", "iptables", "ip6tables", "xtables-backend", "addr", "sysctl"}

// Sysctls compared: the ones either proxy may set in a node's namespace.
var Sysctls = []string{
	"net.ipv4.vs.conntrack", "net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template",
	"net.ipv4.vs.conn_reuse_mode", "net.ipv4.conf.all.route_localnet", "net.ipv4.conf.all.arp_ignore",
	"net.ipv4.conf.all.arp_announce", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
	"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
}

// DumpScript prints a node's kernel state, one "### section" header per
// section; it runs in the node's network namespace. Each command's
// failure (a table or link that does not exist yet) prints nothing.
func DumpScript() string {
	var b strings.Builder
	b.WriteString("echo '### ipvs'; ipvsadm -Sn 2>/dev/null\n")
	b.WriteString("echo '### ipvs-timeouts'; ipvsadm -Ln --timeout 2>/dev/null\n")
	b.WriteString("echo '### ipset'; ipset save 2>/dev/null\n")
	b.WriteString("echo '### iptables'; iptables-save 2>/dev/null\n")
	b.WriteString("echo '### ip6tables'; ip6tables-save 2>/dev/null\n")
	// Which xtables backend holds the KUBE-* chains: both proxies must use
	// the same one, or each sees half of the other's rules.
	b.WriteString("echo '### xtables-backend'\n")
	b.WriteString("for s in iptables-legacy-save iptables-nft-save ip6tables-legacy-save ip6tables-nft-save; do " +
		"n=$($s 2>/dev/null | grep -c '^:KUBE-'); echo \"$s ${n:-0}\"; done\n")
	b.WriteString("echo '### addr'; ip -o link show dev kube-ipvs0 2>/dev/null; ip -o addr show dev kube-ipvs0 2>/dev/null\n")
	b.WriteString("echo '### sysctl'\n")
	for _, k := range Sysctls {
		fmt.Fprintf(&b, "printf '%%s = %%s\\n' %s \"$(sysctl -n %s 2>/dev/null || echo absent)\"\n", k, k)
	}
	return b.String()
}

// Dump is a node's normalized kernel state: lines per section.
type Dump map[string][]string

// String prints the dump section by section, as the harness saves it.
func (d Dump) String() string {
	var b strings.Builder
	for _, s := range Sections {
		fmt.Fprintf(&b, "### %s\n", s)
		for _, l := range d[s] {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// SplitSections cuts a raw dump at its "### section" headers.
func SplitSections(raw string) map[string][]string {
	out := map[string][]string{}
	cur := ""
	for _, l := range strings.Split(raw, "\n") {
		if s, ok := strings.CutPrefix(l, "### "); ok {
			cur = strings.TrimSpace(s)
			out[cur] = nil
			continue
		}
		if cur != "" && strings.TrimSpace(l) != "" {
			out[cur] = append(out[cur], strings.TrimRight(l, " \t\r"))
		}
	}
	return out
}

// Normalize turns a raw dump into a Dump: only ordering, counters, random
// kernel values and comment text are dropped; every rule, member, server
// and address stays. ann tags IPVS lines with their Service (nil: none).
func Normalize(raw string, ann *Annotator) Dump {
	sec := SplitSections(raw)
	return Dump{
		"ipvs":            NormalizeIPVS(sec["ipvs"], ann),
		"ipvs-timeouts":   sec["ipvs-timeouts"],
		"ipset":           NormalizeIPSet(sec["ipset"], ann),
		"iptables":        NormalizeIptables(sec["iptables"]),
		"ip6tables":       NormalizeIptables(sec["ip6tables"]),
		"xtables-backend": normalizeBackend(sec["xtables-backend"]),
		"addr":            NormalizeAddr(sec["addr"]),
		"sysctl":          sortedCopy(sec["sysctl"]),
	}
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// normalizeBackend keeps whether each backend has KUBE-* chains, not how
// many (the count is the iptables sections' business).
func normalizeBackend(lines []string) []string {
	var out []string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 2 {
			out = append(out, f[0]+" "+map[bool]string{true: "has KUBE-* chains", false: "empty"}[f[1] != "0"])
		}
	}
	return out
}

// vsKeyRe finds the virtual server of an `ipvsadm -Sn` line: -t/-u/--sctp-service
// and the address:port, or -f and a firewall mark.
var vsKeyRe = regexp.MustCompile(`^-[Aa] (-[tuf]|--sctp-service) (\S+)`)

// NormalizeIPVS sorts `ipvsadm -Sn` lines by virtual server, the virtual
// server's own line (-A) first and its real servers (-a) after it, and tags
// each with its Service (ann) after a "#".
func NormalizeIPVS(lines []string, ann *Annotator) []string {
	type line struct {
		vs   string
		real bool
		text string
	}
	var ls []line
	for _, l := range lines {
		m := vsKeyRe.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		text := strings.Join(strings.Fields(l), " ")
		if tag := ann.Tag(m[1], m[2]); tag != "" {
			text += " # " + tag
		}
		ls = append(ls, line{vs: m[1] + " " + m[2], real: l[1] == 'a', text: text})
	}
	slices.SortFunc(ls, func(a, b line) int {
		if c := cmp.Compare(a.vs, b.vs); c != 0 {
			return c
		}
		if a.real != b.real {
			if a.real {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.text, b.text)
	})
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.text
	}
	return out
}

// initvalRe is the hash seed the kernel picks for each set: random.
var initvalRe = regexp.MustCompile(` initval 0x[0-9a-f]+`)

// NormalizeIPSet keeps the KUBE-* sets of `ipset save`: each set's create
// line (without the random initval), then its members sorted, each tagged
// with its Service (ann) after a "#"; sets by name.
func NormalizeIPSet(lines []string, ann *Annotator) []string {
	creates := map[string]string{}
	members := map[string][]string{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 2 || !strings.HasPrefix(f[1], "KUBE-") {
			continue
		}
		switch f[0] {
		case "create":
			creates[f[1]] = initvalRe.ReplaceAllString(strings.Join(f, " "), "")
		case "add":
			l := strings.Join(f, " ")
			if len(f) > 2 {
				if tag := ann.IPSetTag(f[2]); tag != "" {
					l += " # " + tag
				}
			}
			members[f[1]] = append(members[f[1]], l)
		}
	}
	names := make([]string, 0, len(creates))
	for n := range creates {
		names = append(names, n)
	}
	for n := range members {
		if _, ok := creates[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var out []string
	for _, n := range names {
		if c, ok := creates[n]; ok {
			out = append(out, c)
		}
		out = append(out, sortedCopy(members[n])...)
	}
	return out
}

var (
	counterRe = regexp.MustCompile(`^\[\d+:\d+\] `)
	commentRe = regexp.MustCompile(`-m comment --comment ("(?:[^"\\]|\\.)*"|\S+)`)
	builtins  = map[string]bool{"INPUT": true, "OUTPUT": true, "FORWARD": true, "PREROUTING": true, "POSTROUTING": true}
)

// NormalizeIptables keeps, per table of an iptables-save dump, the KUBE-*
// chains (declared, and their rules in order), the built-in chains'
// policies and their rules that jump to a KUBE-* chain (in order). Chains
// are sorted by name; counters are dropped; a rule's comment is kept as
// "-m comment" without its text (the text steers nothing).
func NormalizeIptables(lines []string) []string {
	type chain struct {
		decl  string
		rules []string
	}
	tables := map[string]map[string]*chain{}
	table := ""
	get := func(name string) *chain {
		if tables[table] == nil {
			tables[table] = map[string]*chain{}
		}
		c := tables[table][name]
		if c == nil {
			c = &chain{}
			tables[table][name] = c
		}
		return c
	}
	for _, l := range lines {
		l = counterRe.ReplaceAllString(strings.TrimSpace(l), "")
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, ":"):
			f := strings.Fields(l[1:])
			if len(f) < 2 || !(strings.HasPrefix(f[0], "KUBE-") || builtins[f[0]]) {
				continue
			}
			get(f[0]).decl = ":" + f[0] + " " + f[1]
		case strings.HasPrefix(l, "-A "):
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			if !strings.HasPrefix(f[1], "KUBE-") && !(builtins[f[1]] && strings.Contains(l, "KUBE-")) {
				continue
			}
			l = commentRe.ReplaceAllString(l, "-m comment")
			get(f[1]).rules = append(get(f[1]).rules, strings.Join(strings.Fields(l), " "))
		}
	}
	var out []string
	for _, t := range slices.Sorted(maps.Keys(tables)) {
		for _, name := range slices.Sorted(maps.Keys(tables[t])) {
			c := tables[t][name]
			if builtins[name] && len(c.rules) == 0 && strings.HasSuffix(c.decl, " ACCEPT") {
				continue // an untouched built-in chain
			}
			if c.decl != "" {
				out = append(out, "*"+t+" "+c.decl)
			}
			for _, r := range c.rules {
				out = append(out, "*"+t+" "+r)
			}
		}
	}
	return out
}

var (
	addrRe  = regexp.MustCompile(`\binet6? (\S+) (?:brd \S+ )?scope (\S+)`)
	linkRe  = regexp.MustCompile(`^\d+: (kube-ipvs0)(?:@\S+)?: (<[^>]*>).* state (\S+)`)
	linkMTU = regexp.MustCompile(` mtu (\d+)`)
)

// NormalizeAddr keeps kube-ipvs0's flags, state, MTU and addresses (sorted);
// its index and MAC address are the kernel's pick.
func NormalizeAddr(lines []string) []string {
	var link string
	var addrs []string
	for _, l := range lines {
		if m := linkRe.FindStringSubmatch(l); m != nil {
			link = "link " + m[1] + " " + m[2] + " state " + m[3]
			if mm := linkMTU.FindStringSubmatch(l); mm != nil {
				link += " mtu " + mm[1]
			}
			continue
		}
		if m := addrRe.FindStringSubmatch(l); m != nil {
			addrs = append(addrs, "addr "+m[1]+" scope "+m[2])
		}
	}
	slices.Sort(addrs)
	if link != "" {
		addrs = append([]string{link}, addrs...)
	}
	return addrs
}
