package iptables

import (
	"io"
	"strings"
)

// Dump renders the plan as text close to `ipset save` and `iptables-save`
// output (jumps as the "-I" commands that insert them), for golden tests and
// debugging. Output is deterministic.
func (d *Desired) Dump() string {
	var sb strings.Builder
	for _, p := range d.Families {
		sb.WriteString("# " + p.Family.String() + "\n")
		p.dumpSets(&sb)
		p.dumpTables(&sb)
	}
	if len(d.Problems) > 0 {
		sb.WriteString("# problems\n")
		for _, pr := range d.Problems {
			sb.WriteString("# " + pr + "\n")
		}
	}
	if len(d.ServiceProblems) > 0 {
		sb.WriteString("# service problems\n")
		for _, pr := range d.ServiceProblems {
			sb.WriteString("# " + pr.Service.String() + " " + pr.Reason + ": " + pr.Message + "\n")
		}
	}
	return sb.String()
}

func (p *FamilyPlan) dumpSets(w io.StringWriter) {
	for _, s := range p.Sets {
		_, _ = w.WriteString(s.Spec.CreateArgs() + "\n")
		for _, e := range s.Entries {
			_, _ = w.WriteString("add " + s.Spec.Name + " " + e.String() + "\n")
		}
	}
}

func (p *FamilyPlan) dumpTables(w io.StringWriter) {
	for _, t := range ourTables {
		_, _ = w.WriteString("*" + string(t) + "\n")
		for _, c := range p.Chains {
			if c.Table == t {
				_, _ = w.WriteString(":" + c.Name + " - [0:0]\n")
			}
		}
		for _, j := range p.Jumps {
			if j.Table == t {
				_, _ = w.WriteString("-I " + j.From + " " + j.Rule().String() + "\n")
			}
		}
		for _, c := range p.Chains {
			if c.Table != t {
				continue
			}
			for _, r := range c.Rules {
				_, _ = w.WriteString(formatRule(c.Name, r) + "\n")
			}
		}
		_, _ = w.WriteString("COMMIT\n")
	}
}

// restoreInput renders the iptables-restore --noflush input that replaces
// the given chains: declaring a chain creates it or flushes it, leaving
// every other chain alone; each table is committed atomically.
func restoreInput(chains []Chain) string {
	var sb strings.Builder
	for _, t := range ourTables {
		var in []Chain
		for _, c := range chains {
			if c.Table == t {
				in = append(in, c)
			}
		}
		if len(in) == 0 {
			continue
		}
		sb.WriteString("*" + string(t) + "\n")
		for _, c := range in {
			sb.WriteString(":" + c.Name + " - [0:0]\n")
		}
		for _, c := range in {
			for _, r := range c.Rules {
				sb.WriteString(formatRule(c.Name, r) + "\n")
			}
		}
		sb.WriteString("COMMIT\n")
	}
	return sb.String()
}
