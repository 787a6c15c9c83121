package diff

import (
	"math/rand/v2"
	"strings"
)

// Options are the proxy flags of a round, the same for both proxies: only
// flags both accept with the same meaning.
type Options struct {
	NodePortAddresses string // "" (unset), CIDRs, or "primary"
	MasqueradeAll     bool
	ExcludeCIDRs      string
	Scheduler         string // "" (rr, the default) or a kernel scheduler
}

// GenerateOptions picks a round's options; each is unset about half the
// time, so that the defaults are compared as often as the rest.
func GenerateOptions(r *rand.Rand) Options {
	g := gen{r: r}
	var o Options
	if g.chance(0.5) {
		o.NodePortAddresses = g.pick([]string{
			"primary",
			"172.30.0.0/24",
			"172.30.0.0/24,fd00:172:30::/64",
			"fd00:172:30::/64",
			"127.0.0.0/8,172.30.0.0/24",
		})
	}
	o.MasqueradeAll = g.chance(0.3)
	if g.chance(0.3) {
		o.ExcludeCIDRs = g.pick([]string{"192.0.2.0/25", "198.51.100.0/24,2001:db8::/64", "10.96.0.0/28"})
	}
	if g.chance(0.4) {
		o.Scheduler = g.pick([]string{"rr", "wrr", "lc", "sh", "mh", "sed"})
	}
	return o
}

// Flags are the command-line flags of the options.
func (o Options) Flags() []string {
	var f []string
	if o.NodePortAddresses != "" {
		f = append(f, "--nodeport-addresses="+o.NodePortAddresses)
	}
	if o.MasqueradeAll {
		f = append(f, "--masquerade-all")
	}
	if o.ExcludeCIDRs != "" {
		f = append(f, "--ipvs-exclude-cidrs="+o.ExcludeCIDRs)
	}
	if o.Scheduler != "" {
		f = append(f, "--ipvs-scheduler="+o.Scheduler)
	}
	return f
}

func (o Options) String() string {
	if f := o.Flags(); len(f) > 0 {
		return strings.Join(f, " ")
	}
	return "(defaults)"
}
