package bench

import (
	"math"
	"sort"
)

// sample is one latency: V seconds, or more than V if it never showed.
type sample struct {
	V     float64
	Above bool
}

// percentile is the nearest-rank p-th percentile (0 < p <= 100): the
// smallest sample with at least p% of the samples at or below it. With
// few samples, p99 is the maximum.
func percentile(s []sample, p float64) Value {
	if len(s) == 0 {
		return missing("no samples")
	}
	// A bound is the wait's timeout, above every sample that showed.
	sorted := append([]sample(nil), s...)
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].V == sorted[j].V {
			return !sorted[i].Above && sorted[j].Above
		}
		return sorted[i].V < sorted[j].V
	})
	k := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	k = min(max(k, 0), len(sorted)-1)
	if sorted[k].Above {
		return timedOut(sorted[k].V)
	}
	return val(sorted[k].V)
}
