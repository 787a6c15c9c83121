package diff

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// Difference is one hunk of a section where the two proxies' dumps of a
// node differ: the lines only upstream has and the lines only ours has.
type Difference struct {
	Node     string
	Section  string
	Upstream []string
	Ours     []string
	// Allowed names the allowlist entries that explain every line of the
	// hunk; empty when some line is unexplained.
	Allowed []string
}

// Compare diffs two dumps of a node section by section (a longest-common-
// subsequence diff, so that order inside an iptables chain counts and one
// extra rule does not shift everything after it).
func Compare(node string, upstream, ours Dump) []Difference {
	var out []Difference
	for _, s := range Sections {
		out = append(out, diffLines(node, s, upstream[s], ours[s])...)
	}
	return out
}

// diffLines returns the hunks of an LCS diff of a and b.
func diffLines(node, section string, a, b []string) []Difference {
	n, m := len(a), len(b)
	// lcs[i][j] is the LCS length of a[i:] and b[j:].
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []Difference
	var cur *Difference
	flush := func() {
		if cur != nil {
			out = append(out, *cur)
			cur = nil
		}
	}
	hunk := func() *Difference {
		if cur == nil {
			cur = &Difference{Node: node, Section: section}
		}
		return cur
	}
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			flush()
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			hunk().Ours = append(hunk().Ours, b[j])
			j++
		default:
			hunk().Upstream = append(hunk().Upstream, a[i])
			i++
		}
	}
	flush()
	return out
}

// AllowEntry is one known, intended difference (docs/fidelity-allowlist.yaml).
type AllowEntry struct {
	ID      string `json:"id"`
	Section string `json:"section"`
	// Node restricts the entry to one node's dumps ("" for every node).
	Node string `json:"node,omitempty"`
	// Upstream and Ours are regular expressions of the lines only that
	// side has; an empty one matches no line (that side has none).
	Upstream string `json:"upstream,omitempty"`
	Ours     string `json:"ours,omitempty"`
	Reason   string `json:"reason"`
	// E2E names the end-to-end case that asserts both behaviours.
	E2E string `json:"e2e"`

	upstream, ours *regexp.Regexp
}

// Allowlist is the list of intended differences.
type Allowlist struct {
	Entries []*AllowEntry `json:"entries"`
}

// ParseAllowlist reads the YAML allowlist and compiles its matchers.
func ParseAllowlist(buf []byte) (*Allowlist, error) {
	var al Allowlist
	if err := yaml.UnmarshalStrict(buf, &al); err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, e := range al.Entries {
		switch {
		case e.ID == "":
			return nil, fmt.Errorf("an allowlist entry has no id")
		case ids[e.ID]:
			return nil, fmt.Errorf("allowlist entry %s: id used twice", e.ID)
		case !slices.Contains(Sections, e.Section):
			return nil, fmt.Errorf("allowlist entry %s: section %q is not one of %v", e.ID, e.Section, Sections)
		case e.Upstream == "" && e.Ours == "":
			return nil, fmt.Errorf("allowlist entry %s: no matcher", e.ID)
		case e.Reason == "" || e.E2E == "":
			return nil, fmt.Errorf("allowlist entry %s: reason and e2e are required", e.ID)
		}
		ids[e.ID] = true
		var err error
		if e.upstream, err = compile(e.Upstream); err != nil {
			return nil, fmt.Errorf("allowlist entry %s: upstream: %w", e.ID, err)
		}
		if e.ours, err = compile(e.Ours); err != nil {
			return nil, fmt.Errorf("allowlist entry %s: ours: %w", e.ID, err)
		}
	}
	return &al, nil
}

// LoadAllowlist reads the allowlist file.
func LoadAllowlist(path string) (*Allowlist, error) {
	buf, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	al, err := ParseAllowlist(buf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return al, nil
}

func compile(re string) (*regexp.Regexp, error) {
	if re == "" {
		return nil, nil
	}
	return regexp.Compile(re)
}

// explain returns the id of the first entry of section that matches line
// on its side, or "".
func (al *Allowlist) explain(node, section string, upstreamSide bool, line string) string {
	if al == nil {
		return ""
	}
	for _, e := range al.Entries {
		re := e.ours
		if upstreamSide {
			re = e.upstream
		}
		if e.Section == section && (e.Node == "" || e.Node == node) && re != nil && re.MatchString(line) {
			return e.ID
		}
	}
	return ""
}

// Classify sets Allowed on each difference whose every line an entry
// explains.
func (al *Allowlist) Classify(diffs []Difference) {
	for i := range diffs {
		d := &diffs[i]
		d.Allowed = nil
		var ids []string
		ok := true
		for side, lines := range map[bool][]string{true: d.Upstream, false: d.Ours} {
			for _, l := range lines {
				id := al.explain(d.Node, d.Section, side, l)
				if id == "" {
					ok = false
				} else if !slices.Contains(ids, id) {
					ids = append(ids, id)
				}
			}
		}
		if ok {
			slices.Sort(ids)
			d.Allowed = ids
		}
	}
}

// Report prints differences with what reproduces them.
func Report(diffs []Difference, reproduce string) string {
	var b strings.Builder
	for _, d := range diffs {
		status := "UNEXPLAINED"
		if len(d.Allowed) > 0 {
			status = "allowed (" + strings.Join(d.Allowed, ", ") + ")"
		}
		fmt.Fprintf(&b, "%s: %s %s [%s]\n", status, d.Node, d.Section, reproduce)
		for _, l := range d.Upstream {
			fmt.Fprintf(&b, "  - upstream: %s\n", l)
		}
		for _, l := range d.Ours {
			fmt.Fprintf(&b, "  + ours:     %s\n", l)
		}
	}
	return b.String()
}

// Unexplained counts the differences no entry explains.
func Unexplained(diffs []Difference) int {
	n := 0
	for _, d := range diffs {
		if len(d.Allowed) == 0 {
			n++
		}
	}
	return n
}
