package probe

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ipsetEntries returns the number of entries of an ipset (`ipset -t list`
// prints the header only), or -1 when the set does not exist.
func ipsetEntries(name string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ipset", "-t", "list", name).Output()
	if err != nil {
		return -1
	}
	return parseIpsetEntries(string(out))
}

func parseIpsetEntries(out string) int {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Number of entries:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// ChainRule names a rule to look for: a chain of a table holding a rule
// that contains Contains (in `iptables -S` form).
type ChainRule struct {
	Table    string `json:"table"`
	Chain    string `json:"chain"`
	Contains string `json:"contains"`
}

// present reports whether the rule is there.
func (r ChainRule) present() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "iptables", "-w", "-t", r.Table, "-S", r.Chain).Output()
	if err != nil {
		return false
	}
	return strings.Contains(string(out), r.Contains)
}
