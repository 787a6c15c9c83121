package iptables

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Tables manages our chains in one family's iptables (iptables or
// ip6tables). Implementations refuse chains that are not ours (OwnsChain)
// and jumps from anything but a built-in chain.
type Tables interface {
	// ListTable returns, for one table, the rules of each of our chains
	// that exists and of each built-in chain (where jumps live):
	// `iptables -t TABLE -S`, one call for the whole table. A chain
	// missing from the map does not exist.
	ListTable(table Table) (map[string][]Rule, error)
	// ListTables is ListTable for several tables at once: one
	// `iptables-save` for all of them.
	ListTables(tables []Table) (map[Table]map[string][]Rule, error)
	// ReplaceChains sets the complete content of the given chains,
	// creating missing ones, in one `iptables-restore --noflush` call:
	// atomic per table, and chains not listed are left alone.
	ReplaceChains(chains []Chain) error
	// InsertJump puts the jump at the top of its built-in chain, as
	// upstream's EnsureRule(Prepend) does when the rule is missing:
	//   iptables -t nat -I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
	InsertJump(j Jump) error
	// DeleteJump removes the jump (iptables -D); it must be present.
	DeleteJump(j Jump) error
	// DeleteChains flushes all the given chains, then deletes them, in
	// one iptables-restore; missing chains are fine.
	DeleteChains(table Table, chains []string) error
}

func checkOwnedChain(table Table, chain string) error {
	if !OwnsChain(table, chain) {
		return fmt.Errorf("refusing to touch chain %s in table %s: not one of ours", chain, table)
	}
	return nil
}

func checkJump(j Jump) error {
	if !builtinChains[j.Table][j.From] {
		return fmt.Errorf("jump to %s: %s is not a built-in chain of table %s", j.To, j.From, j.Table)
	}
	return checkOwnedChain(j.Table, j.To)
}

// Backend picks the iptables variant. Debian-style systems have both and an
// `iptables` alternative pointing at one; kube-proxy must use the same one
// as the rest of the node (kubelet, CNI).
type Backend string

const (
	BackendDefault Backend = ""       // iptables / ip6tables from PATH
	BackendNFT     Backend = "nft"    // iptables-nft / ip6tables-nft
	BackendLegacy  Backend = "legacy" // iptables-legacy / ip6tables-legacy
)

// IptablesTables is the real Tables: jumps through iptables -I/-D, chain
// contents and chain deletion through iptables-restore --noflush, and
// listing through iptables-save (or one `iptables -S` per table). Listing
// chain by chain would cost a process per chain, and iptables-nft 1.8.9
// reports a missing chain as "incompatible", which cannot be told apart
// from a real problem. Every process waits at most lockWait for the
// xtables lock and is killed after its timeout (see command.go).
type IptablesTables struct {
	path        string // iptables binary
	restorePath string
	savePath    string // iptables-save, "" when there is none
	nft         bool   // iptables-nft: the rules are nftables objects

	// Timeouts of the processes: restoreTimeout and commandTimeout.
	restoreTimeout, commandTimeout time.Duration
}

var _ Tables = (*IptablesTables)(nil)

// NewIptablesTables finds the family's iptables and iptables-restore
// binaries for the backend.
func NewIptablesTables(f Family, backend Backend) (*IptablesTables, error) {
	if f != IPv4 && f != IPv6 {
		return nil, fmt.Errorf("unknown IP family %v", f)
	}
	name := "iptables"
	if f == IPv6 {
		name = "ip6tables"
	}
	if backend != BackendDefault {
		name += "-" + string(backend)
	}
	found, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// The restore binary sits next to the one found, so both talk to the
	// same backend (iptables-nft -> iptables-nft-restore).
	restore := filepath.Join(filepath.Dir(found), filepath.Base(found)+"-restore")
	if _, err := exec.LookPath(restore); err != nil {
		return nil, fmt.Errorf("%s has no %s: %w", found, filepath.Base(restore), err)
	}
	// iptables-save lists every table in one process; without it, one
	// `iptables -S` per table does.
	save := filepath.Join(filepath.Dir(found), filepath.Base(found)+"-save")
	if _, err := exec.LookPath(save); err != nil {
		save = ""
	}
	// `iptables --version`: "iptables v1.8.9 (nf_tables)" or "(legacy)".
	version, stderr, err := runBounded(commandTimeout, "", found, "--version")
	if err != nil {
		return nil, withOutput(err, stderr)
	}
	nft := strings.Contains(version, "(nf_tables)")
	return &IptablesTables{path: found, restorePath: restore, savePath: save, nft: nft,
		restoreTimeout: restoreTimeout, commandTimeout: commandTimeout}, nil
}

// NFTables reports whether the binaries are iptables-nft, whose rules
// count in the nftables generation (NFTGeneration).
func (t *IptablesTables) NFTables() bool { return t.nft }

// ListTables: iptables-save (the tables asked for are picked from its
// output; a table it does not print has no chains yet).
func (t *IptablesTables) ListTables(tables []Table) (map[Table]map[string][]Rule, error) {
	out := make(map[Table]map[string][]Rule, len(tables))
	for _, table := range tables {
		if _, ok := builtinChains[table]; !ok {
			return nil, fmt.Errorf("unknown table %q", table)
		}
	}
	if t.savePath == "" {
		return listEach(t, tables)
	}
	// iptables-save (it takes no lock: reading is atomic per table)
	stdout, stderr, err := runBounded(t.restoreTimeout, "", t.savePath)
	if err != nil {
		return nil, withOutput(err, stderr)
	}
	sections := splitSave(stdout)
	for _, table := range tables {
		chains, err := parseTableListing(sections[table], func(c string) bool {
			return OwnsChain(table, c) || builtinChains[table][c]
		})
		if err != nil {
			return nil, fmt.Errorf("%s: table %s: %w", filepath.Base(t.savePath), table, err)
		}
		out[table] = chains
	}
	return out, nil
}

// splitSave turns iptables-save output into `iptables -S` lines per table:
// ":CHAIN POLICY [0:0]" becomes "-N CHAIN", rules stay as they are.
func splitSave(text string) map[Table][]string {
	out := map[Table][]string{}
	var cur Table
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			cur = Table(strings.TrimSpace(line[1:]))
		case line == "COMMIT":
			cur = ""
		case cur == "":
		case strings.HasPrefix(line, ":"):
			if f := strings.Fields(line[1:]); len(f) > 0 {
				out[cur] = append(out[cur], "-N "+f[0])
			}
		case strings.HasPrefix(line, "-A "):
			out[cur] = append(out[cur], line)
		}
	}
	return out
}

// ListTable: iptables -w 5 -t TABLE -S
func (t *IptablesTables) ListTable(table Table) (map[string][]Rule, error) {
	if _, ok := builtinChains[table]; !ok {
		return nil, fmt.Errorf("unknown table %q", table)
	}
	stdout, stderr, err := t.iptables("-t", string(table), "-S")
	if err != nil {
		return nil, withOutput(err, stderr)
	}
	chains, err := parseTableListing(strings.Split(stdout, "\n"), func(c string) bool {
		return OwnsChain(table, c) || builtinChains[table][c]
	})
	if err != nil {
		return nil, fmt.Errorf("%s -t %s -S: %w", filepath.Base(t.path), table, err)
	}
	return chains, nil
}

// ReplaceChains: iptables-restore -w 5 --noflush, with input like
//
//	*nat
//	:KUBE-SERVICES - [0:0]
//	-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
//	COMMIT
func (t *IptablesTables) ReplaceChains(chains []Chain) error {
	if len(chains) == 0 {
		return nil
	}
	for _, c := range chains {
		if err := checkOwnedChain(c.Table, c.Name); err != nil {
			return err
		}
	}
	return t.restore(restoreInput(chains))
}

// restore: iptables-restore -w 5 --noflush < input
func (t *IptablesTables) restore(input string) error {
	args := append(slices.Clone(lockWait), "--noflush")
	stdout, stderr, err := runBounded(t.restoreTimeout, input, t.restorePath, args...)
	if err != nil {
		out := stdout + stderr
		if errors.Is(err, ErrTimeout) || strings.Contains(out, "xtables lock") {
			return withOutput(err, out) // not the input's fault
		}
		return fmt.Errorf("%w%s", withOutput(err, out), failedLine(out, input))
	}
	return nil
}

// iptables runs one bounded iptables call: iptables -w 5 ARGS.
func (t *IptablesTables) iptables(args ...string) (stdout, stderr string, err error) {
	return runBounded(t.commandTimeout, "", t.path, append(slices.Clone(lockWait), args...)...)
}

// iptables-restore says "line 4 failed" (legacy), "Error occurred at
// line: 4" or "line 4: RULE_APPEND failed" (nft).
var failedLineRE = regexp.MustCompile(`line:? (\d+)`)

// failedLine quotes the input line iptables-restore names in its error, or
// the whole input when it names none.
func failedLine(output, input string) string {
	lines := strings.Split(input, "\n")
	if m := failedLineRE.FindStringSubmatch(output); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil && n >= 1 && n <= len(lines) {
			return fmt.Sprintf(" (line %d: %s)", n, lines[n-1])
		}
	}
	return "\ninput:\n" + input
}

// InsertJump: iptables -w 5 -t TABLE -I CHAIN 1 RULE
func (t *IptablesTables) InsertJump(j Jump) error {
	if err := checkJump(j); err != nil {
		return err
	}
	args := append([]string{"-t", string(j.Table), "-I", j.From, "1"}, j.Rule()...)
	if _, stderr, err := t.iptables(args...); err != nil {
		return fmt.Errorf("inserting jump %s -> %s: %w", j.From, j.To, withOutput(err, stderr))
	}
	return nil
}

// DeleteJump: iptables -w 5 -t TABLE -D CHAIN RULE
func (t *IptablesTables) DeleteJump(j Jump) error {
	if err := checkJump(j); err != nil {
		return err
	}
	args := append([]string{"-t", string(j.Table), "-D", j.From}, j.Rule()...)
	if _, stderr, err := t.iptables(args...); err != nil {
		return fmt.Errorf("deleting jump %s -> %s: %w", j.From, j.To, withOutput(err, stderr))
	}
	return nil
}

// DeleteChains: one iptables-restore -w 5 --noflush that declares (so creates
// or flushes) every chain, then deletes each with -X. Flushing all first
// drops references between our chains; a missing chain is simply created
// and deleted. Jumps into the chains must be gone already.
func (t *IptablesTables) DeleteChains(table Table, chains []string) error {
	if len(chains) == 0 {
		return nil
	}
	var sb strings.Builder
	sb.WriteString("*" + string(table) + "\n")
	for _, c := range chains {
		if err := checkOwnedChain(table, c); err != nil {
			return err
		}
		sb.WriteString(":" + c + " - [0:0]\n")
	}
	for _, c := range chains {
		sb.WriteString("-X " + c + "\n")
	}
	sb.WriteString("COMMIT\n")
	return t.restore(sb.String())
}

// listEach is ListTables as one ListTable call per table.
func listEach(t Tables, tables []Table) (map[Table]map[string][]Rule, error) {
	out := make(map[Table]map[string][]Rule, len(tables))
	for _, table := range tables {
		chains, err := t.ListTable(table)
		if err != nil {
			return nil, err
		}
		out[table] = chains
	}
	return out, nil
}
