package probe

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// WaitSpec: wait, from the start of process Pid, until the kernel holds a
// full table (VS, RS, Sets, Rule) and/or the proxy reports a sync (Metric).
type WaitSpec struct {
	Pid  int            `json:"pid"`
	VS   int            `json:"vs,omitempty"`
	RS   int            `json:"rs,omitempty"`
	Sets map[string]int `json:"sets,omitempty"`
	Rule *ChainRule     `json:"rule,omitempty"`
	// Metric must be present with the IPv4 label and above 0.
	Metric     string `json:"metric,omitempty"`
	MetricsURL string `json:"metricsURL,omitempty"`
	// TrackVS counts virtual servers on every table poll, to report the
	// fewest seen (a restart must not lose any).
	TrackVS bool `json:"trackVS,omitempty"`
	// MaxIntervalMS bounds the table poll interval; it grows with the
	// elapsed time (a twentieth of it) from 200 ms.
	MaxIntervalMS int     `json:"maxIntervalMS,omitempty"`
	TimeoutS      float64 `json:"timeoutS"`
}

// WaitResult: the times are the process's age when the condition was
// first seen.
type WaitResult struct {
	Done   bool    `json:"done"`
	IPVSAt float64 `json:"ipvsAt,omitempty"`
	// IPVSAfter and DoneAfter: the previous polls, which did not see it
	// yet (the state came between the two).
	IPVSAfter float64        `json:"ipvsAfter,omitempty"`
	DoneAfter float64        `json:"doneAfter,omitempty"`
	SetsAt    float64        `json:"setsAt,omitempty"`
	DoneAt    float64        `json:"doneAt,omitempty"`
	MetricAt  float64        `json:"metricAt,omitempty"`
	Stat      ProcStat       `json:"stat"`
	Last      Counts         `json:"last"`
	MinVS     int            `json:"minVS"`
	SetCounts map[string]int `json:"setCounts,omitempty"`
	Polls     int            `json:"polls"`
}

// Wait polls until every condition of s holds, the process exits (an
// error) or the timeout (Done false).
func Wait(s WaitSpec) (WaitResult, error) {
	r := WaitResult{MinVS: -1, SetCounts: map[string]int{}}
	st, err := ReadProcStat(s.Pid)
	if err != nil {
		return r, err
	}
	start := Uptime() - st.Age
	age := func() float64 { return Uptime() - start }
	var table procIPVS
	needIPVS := s.VS > 0 || s.RS > 0
	ipvsOK, setsOK, ruleOK, metricOK := !needIPVS, len(s.Sets) == 0, s.Rule == nil, s.Metric == ""
	maxIv := ms(s.MaxIntervalMS, 2*time.Second)
	lastTable := time.Time{}
	var pollCost time.Duration
	var lastTableAge, lastPollAge float64
	for {
		if !alive(s.Pid) {
			return r, fmt.Errorf("process %d exited after %.1fs", s.Pid, age())
		}
		// A poll costs the proxy CPU: keep polls under a tenth of one.
		iv := max(min(max(secs(age()/20), 200*time.Millisecond), maxIv), 9*pollCost)
		pollStart := time.Now()
		if !metricOK {
			if page, err := scrape(s.MetricsURL); err == nil {
				if v, ok := metricValue(page, s.Metric, Family); ok && v > 0 {
					metricOK, r.MetricAt = true, age()
				}
			}
		}
		if (!ipvsOK || s.TrackVS) && time.Since(lastTable) >= iv {
			lastTable = time.Now()
			c, err := table.Count()
			if err != nil {
				return r, err
			}
			r.Polls++
			r.Last = c
			if r.MinVS < 0 || c.VS < r.MinVS {
				r.MinVS = c.VS
			}
			if !ipvsOK && c.VS >= s.VS && c.RS >= s.RS {
				ipvsOK, r.IPVSAt, r.IPVSAfter = true, age(), lastTableAge
			}
			lastTableAge = age()
		}
		if ipvsOK && !setsOK {
			// Entries only come during a cold sync: a full set stays
			// full, and one process a poll is enough.
			setsOK = true
			for _, name := range slices.Sorted(maps.Keys(s.Sets)) {
				if r.SetCounts[name] >= s.Sets[name] {
					continue
				}
				r.SetCounts[name] = ipsetEntries(name)
				if r.SetCounts[name] < s.Sets[name] {
					setsOK = false
					break
				}
			}
			if setsOK {
				r.SetsAt = age()
			}
		}
		if ipvsOK && setsOK && !ruleOK {
			ruleOK = s.Rule.present()
		}
		if ipvsOK && setsOK && ruleOK && metricOK {
			r.Done, r.DoneAt, r.DoneAfter = true, age(), lastPollAge
			break
		}
		lastPollAge = age()
		if age() > s.TimeoutS {
			break
		}
		pollCost = max(pollCost/2, time.Since(pollStart)) // a cheap poll does not hide a costly one
		// Metrics are cheap to read: poll them more often than the table.
		if !metricOK {
			time.Sleep(min(iv, 200*time.Millisecond))
		} else {
			time.Sleep(iv)
		}
	}
	r.Stat, err = ReadProcStat(s.Pid)
	return r, err
}

// IdleSpec: measure periodic syncs of an idle proxy from its metrics.
type IdleSpec struct {
	Pid        int     `json:"pid"`
	MetricsURL string  `json:"metricsURL"`
	Syncs      int     `json:"syncs"`
	TimeoutS   float64 `json:"timeoutS"`
}

// IdleResult: Syncs syncs ended in Window seconds, starting right after
// one ended; DurationPerSync is the mean the proxy reports, CPUPerSync the
// process's CPU over the window divided by Syncs.
type IdleResult struct {
	Syncs           int     `json:"syncs"`
	Window          float64 `json:"window"`
	DurationPerSync float64 `json:"durationPerSync"`
	CPUPerSync      float64 `json:"cpuPerSync"`
	HWMKiB          int64   `json:"hwmKiB"`
}

// Idle waits for a sync to end, then for s.Syncs more.
//
// Scraping /metrics costs the proxy CPU (tens of milliseconds a scrape in
// the emulated VM), which would count as the proxy's own: the window is
// scraped only near its ends. The probe scrapes once a second until two
// syncs have ended, which gives the period; then it sleeps through all but
// the last two seconds of the expected window and scrapes once a second
// again until the last sync has ended.
func Idle(s IdleSpec) (IdleResult, error) {
	var r IdleResult
	deadline := time.Now().Add(secs(s.TimeoutS))
	read := func() (count, sum float64, err error) {
		page, err := scrape(s.MetricsURL)
		if err != nil {
			return 0, 0, err
		}
		count, ok1 := metricValue(page, MetricSyncDurationCount, Family)
		sum, ok2 := metricValue(page, MetricSyncDurationSum, Family)
		if !ok1 || !ok2 {
			return 0, 0, errors.New("no sync duration metric (IPv4) yet")
		}
		return count, sum, nil
	}
	var c0, s0 float64
	var st0 ProcStat
	var t0, first time.Time
	init := -1.0
	for time.Now().Before(deadline) {
		if !alive(s.Pid) {
			return r, fmt.Errorf("process %d exited", s.Pid)
		}
		c, sum, err := read()
		if err == nil {
			switch {
			case init < 0:
				init = c
			case first.IsZero() && c > init:
				init, first = c, time.Now()
			case t0.IsZero() && !first.IsZero() && c > init:
				c0, s0, t0 = c, sum, time.Now()
				if st0, err = ReadProcStat(s.Pid); err != nil {
					return r, err
				}
				period := t0.Sub(first) / time.Duration(c-init)
				wake := t0.Add(time.Duration(s.Syncs)*period - 2*time.Second)
				if wake.After(deadline) {
					wake = deadline
				}
				time.Sleep(time.Until(wake))
				continue
			case !t0.IsZero() && c-c0 >= float64(s.Syncs):
				return idleResult(s.Pid, c-c0, sum-s0, st0, t0)
			}
		}
		time.Sleep(time.Second)
	}
	if !t0.IsZero() {
		if c, sum, err := read(); err == nil && c > c0 {
			return idleResult(s.Pid, c-c0, sum-s0, st0, t0)
		}
	}
	return r, fmt.Errorf("fewer than one full sync in %.0fs", s.TimeoutS)
}

func idleResult(pid int, n, sum float64, st0 ProcStat, t0 time.Time) (IdleResult, error) {
	st, err := ReadProcStat(pid)
	if err != nil {
		return IdleResult{}, err
	}
	return IdleResult{Syncs: int(n), Window: time.Since(t0).Seconds(), DurationPerSync: sum / n,
		CPUPerSync: (st.CPU - st0.CPU) / n, HWMKiB: st.HWMKiB}, nil
}
