package iptables

import (
	"fmt"
	"slices"
	"strings"
)

// This file converts rules to and from the text iptables-save, `iptables
// -S` and iptables-restore use.

// String renders the rule's arguments as iptables-save would.
func (r Rule) String() string {
	var sb strings.Builder
	for i, arg := range r {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(quoteArg(arg, i > 0 && r[i-1] == "--comment"))
	}
	return sb.String()
}

// Equal compares two rules argument by argument: both sides are in the
// canonical form, so no further normalization is needed.
func (r Rule) Equal(o Rule) bool { return slices.Equal(r, o) }

// formatRule renders "-A CHAIN args...".
func formatRule(chain string, r Rule) string {
	if len(r) == 0 {
		return "-A " + chain
	}
	return "-A " + chain + " " + r.String()
}

// quoteArg quotes like iptables-save's xtables_save_string: comments are
// quoted unless made only of [A-Za-z0-9_-]; other arguments only when they
// would not survive splitting on blanks. Inside quotes, `"`, `\` and `'`
// are escaped. iptables-restore reads this back unchanged.
func quoteArg(s string, isComment bool) string {
	needs := s == ""
	for _, c := range s {
		switch {
		case c == ' ' || c == '\t' || c == '"' || c == '\'' || c == '\\':
			needs = true
		case isComment && !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'):
			needs = true
		}
	}
	if !needs {
		return s
	}
	var sb strings.Builder
	sb.WriteByte('"')
	for _, c := range s {
		if c == '"' || c == '\\' || c == '\'' {
			sb.WriteByte('\\')
		}
		sb.WriteRune(c)
	}
	sb.WriteByte('"')
	return sb.String()
}

// splitArgs splits a rule line the way iptables-restore does: on blanks,
// with double quotes grouping and, inside them, backslash escaping.
func splitArgs(line string) ([]string, error) {
	var args []string
	var cur strings.Builder
	inArg, quoted, escaped := false, false, false
	for _, c := range line {
		switch {
		case escaped:
			cur.WriteRune(c)
			escaped = false
		case quoted && c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
			inArg = true
		case !quoted && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(c)
			inArg = true
		}
	}
	if quoted || escaped {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// parseTableListing parses `iptables -t T -S` output into the rules of
// each chain that keep(chain) accepts. Every existing chain appears in the
// map ("-P" lines declare built-in chains, "-N" lines the others), even
// when empty.
func parseTableListing(lines []string, keep func(chain string) bool) (map[string][]Rule, error) {
	chains := map[string][]Rule{}
	for _, line := range lines {
		// Chain names never need quoting: filter before tokenizing, so
		// other chains' rules cannot get in the way.
		if f := strings.Fields(line); len(f) < 2 || !keep(f[1]) {
			continue
		}
		args, err := splitArgs(line)
		if err != nil {
			return nil, err
		}
		switch args[0] {
		case "-P", "-N":
			if _, ok := chains[args[1]]; !ok {
				chains[args[1]] = nil
			}
		case "-A":
			chains[args[1]] = append(chains[args[1]], Rule(args[2:]))
		}
	}
	return chains, nil
}

// rulesEqual compares two rule lists in order.
func rulesEqual(a, b []Rule) bool {
	return slices.EqualFunc(a, b, Rule.Equal)
}
