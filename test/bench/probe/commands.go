package probe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Event is one line of a command's output.
type Event struct {
	Ev  string `json:"ev"` // ready, seen, timeout, result, error
	I   int    `json:"i,omitempty"`
	Msg string `json:"msg,omitempty"`
	// Result is the command's result (ev "result").
	Result json.RawMessage `json:"result,omitempty"`
}

// Commands lists the commands Run knows.
var Commands = []string{"wait", "idle", "changes", "churn", "stat", "quiet", "time", "costs"}

// Run runs one command: its spec is JSON on in, its events go to out.
func Run(cmd string, in io.Reader, out io.Writer) error {
	e := &emitter{w: out}
	var err error
	switch cmd {
	case "wait":
		var s WaitSpec
		if err = json.NewDecoder(in).Decode(&s); err == nil {
			err = e.result(Wait(s))
		}
	case "idle":
		var s IdleSpec
		if err = json.NewDecoder(in).Decode(&s); err == nil {
			err = e.result(Idle(s))
		}
	case "changes":
		var s ChangesSpec
		if err = json.NewDecoder(in).Decode(&s); err == nil {
			err = Changes(s, e)
		}
	case "churn":
		var s ChurnSpec
		if err = json.NewDecoder(in).Decode(&s); err == nil {
			err = e.result(Churn(s, e))
		}
	case "stat":
		var s StatSpec
		if err = json.NewDecoder(in).Decode(&s); err == nil {
			err = e.result(ReadProcStat(s.Pid))
		}
	case "quiet":
		var s QuietSpec
		if err = json.NewDecoder(in).Decode(&s); err == nil {
			err = e.result(Quiet(s))
		}
	case "time":
		var s TimeSpec
		if err = json.NewDecoder(in).Decode(&s); err == nil {
			err = e.result(Time(s))
		}
	case "costs":
		err = e.result(Costs())
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		e.emit(Event{Ev: "error", Msg: err.Error()})
	}
	return err
}

type emitter struct {
	mu sync.Mutex
	w  io.Writer
}

func (e *emitter) emit(ev Event) {
	buf, _ := json.Marshal(ev)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.w.Write(append(buf, '\n'))
}

func (e *emitter) result(v any, err error) error {
	if err != nil {
		return err
	}
	buf, err := json.Marshal(v)
	if err != nil {
		return err
	}
	e.emit(Event{Ev: "result", Result: buf})
	return nil
}

func ms(n int, def time.Duration) time.Duration {
	if n <= 0 {
		return def
	}
	return time.Duration(n) * time.Millisecond
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	buf, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	for i := len(buf) - 1; i >= 0; i-- {
		if buf[i] == ')' {
			return i+2 < len(buf) && buf[i+2] != 'Z'
		}
	}
	return false
}

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
	var t0 time.Time
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
			case t0.IsZero() && c > init:
				c0, s0, t0 = c, sum, time.Now()
				if st0, err = ReadProcStat(s.Pid); err != nil {
					return r, err
				}
			case !t0.IsZero() && c-c0 >= float64(s.Syncs):
				return idleResult(s.Pid, c-c0, sum-s0, st0, t0)
			}
		}
		// Scraping costs the proxy CPU too: once a second is plenty to
		// see syncs 30 s apart.
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

// ChangesSpec: a sequence of single changes. For each step the command
// waits until the kernel is NOT in the step's state and says "ready i"
// (the host then writes the change to the API), then says "seen i" at the
// first poll that finds the state ("timeout i" after StepTimeoutS).
type ChangesSpec struct {
	Steps        []Expect `json:"steps"`
	IntervalMS   int      `json:"intervalMS"`
	StepTimeoutS float64  `json:"stepTimeoutS"`
}

// Changes runs a ChangesSpec.
func Changes(s ChangesSpec, e *emitter) error {
	l, err := newIPVSLookup()
	if err != nil {
		return err
	}
	defer l.Close()
	iv := ms(s.IntervalMS, 50*time.Millisecond)
	waitFor := func(x Expect, want bool, timeout time.Duration) (bool, error) {
		deadline := time.Now().Add(timeout)
		for {
			ok, err := l.Holds(x)
			if err != nil {
				return false, err
			}
			if ok == want {
				return true, nil
			}
			if time.Now().After(deadline) {
				return false, nil
			}
			time.Sleep(iv)
		}
	}
	for i, x := range s.Steps {
		ok, err := waitFor(x, false, secs(s.StepTimeoutS))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("step %d: the kernel already holds %+v and keeps it", i, x)
		}
		e.emit(Event{Ev: "ready", I: i})
		ok, err = waitFor(x, true, secs(s.StepTimeoutS))
		if err != nil {
			return err
		}
		if ok {
			e.emit(Event{Ev: "seen", I: i})
		} else {
			e.emit(Event{Ev: "timeout", I: i})
		}
	}
	e.emit(Event{Ev: "result", Result: json.RawMessage("{}")})
	return nil
}

// ChurnStep is one change of a churn run, due OffsetMS after the start.
type ChurnStep struct {
	Expect
	OffsetMS int `json:"offsetMS"`
}

// ChurnSpec: the host writes step i at OffsetMS after it reads "ready";
// the command looks for every due, unseen step each IntervalMS (at least)
// and says "seen i". It ends when every step was seen or DrainS after the
// last one was due.
type ChurnSpec struct {
	Pid        int         `json:"pid"`
	Steps      []ChurnStep `json:"steps"`
	IntervalMS int         `json:"intervalMS"`
	DrainS     float64     `json:"drainS"`
	// MaxDuty bounds the share of one CPU the watching may take (0.2 by
	// default): a round that took d is followed by a pause of at least
	// d*(1/MaxDuty-1), so that the probe does not slow the proxy down
	// (many changes pending make rounds long, and rarer).
	MaxDuty float64 `json:"maxDuty,omitempty"`
}

// ChurnResult: the proxy's CPU from "ready" to the end.
type ChurnResult struct {
	Seen   int     `json:"seen"`
	Window float64 `json:"window"`
	CPU    float64 `json:"cpu"`
	HWMKiB int64   `json:"hwmKiB"`
	Rounds int     `json:"rounds"`
	// Scans: rounds that read the whole table once instead of one netlink
	// request per pending step (whichever was estimated cheaper).
	Scans int `json:"scans"`
	// RoundCost is the mean time a round took (without the pause).
	RoundCost float64 `json:"roundCost"`
	// ProbeCPU is this command's own CPU time: what the watching cost.
	ProbeCPU float64 `json:"probeCpu"`
}

// Churn runs a ChurnSpec. Every step must expect a real server present.
func Churn(s ChurnSpec, e *emitter) (ChurnResult, error) {
	var r ChurnResult
	l, err := newIPVSLookup()
	if err != nil {
		return r, err
	}
	defer l.Close()
	order := make([]int, len(s.Steps))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return s.Steps[order[a]].OffsetMS < s.Steps[order[b]].OffsetMS })
	last := 0
	type keys struct {
		vs, rs string
		ok     bool
	}
	pk := make([]keys, len(s.Steps))
	for i, st := range s.Steps {
		if !st.Present || st.RS == "" {
			return r, fmt.Errorf("churn step %d: want a real server present, got %+v", i, st.Expect)
		}
		last = max(last, st.OffsetMS)
		pk[i].vs, pk[i].rs, pk[i].ok = procKeys(st.VS, st.RS)
	}
	duty := s.MaxDuty
	if duty <= 0 || duty > 1 {
		duty = 0.2
	}
	// What one table read and one lookup cost, measured as we go.
	var table procIPVS
	t := time.Now()
	if _, err := table.read(); err != nil {
		return r, err
	}
	scanCost := time.Since(t)
	lookupCost := time.Millisecond

	st0, err := ReadProcStat(s.Pid)
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	e.emit(Event{Ev: "ready"})
	iv := ms(s.IntervalMS, 250*time.Millisecond)
	seen := make([]bool, len(s.Steps))
	mark := func(i int) {
		if !seen[i] {
			seen[i] = true
			r.Seen++
			e.emit(Event{Ev: "seen", I: i})
		}
	}
	end := t0.Add(time.Duration(last)*time.Millisecond + secs(s.DrainS))
	for r.Seen < len(s.Steps) && time.Now().Before(end) {
		round := time.Now()
		r.Rounds++
		// Due steps, with a little slack for the host's clock.
		due := int(time.Since(t0)/time.Millisecond) + 200
		var pending []int
		allProc := true
		for _, i := range order {
			if s.Steps[i].OffsetMS > due {
				break
			}
			if !seen[i] {
				pending = append(pending, i)
				allProc = allProc && pk[i].ok
			}
		}
		if allProc && time.Duration(len(pending))*lookupCost > scanCost {
			r.Scans++
			want := procWant{}
			for _, i := range pending {
				if want[pk[i].vs] == nil {
					want[pk[i].vs] = map[string]int{}
				}
				want[pk[i].vs][pk[i].rs] = i
			}
			t := time.Now()
			if err := table.scan(want, mark); err != nil {
				return r, err
			}
			scanCost = (scanCost + time.Since(t)) / 2
		} else if len(pending) > 0 {
			t := time.Now()
			for _, i := range pending {
				ok, err := l.Holds(s.Steps[i].Expect)
				if err != nil {
					return r, err
				}
				if ok {
					mark(i)
				}
			}
			lookupCost = (lookupCost + time.Since(t)/time.Duration(len(pending))) / 2
		}
		took := time.Since(round)
		r.RoundCost += took.Seconds()
		time.Sleep(max(iv-took, time.Duration(float64(took)*(1/duty-1))))
	}
	st, err := ReadProcStat(s.Pid)
	if err != nil {
		return r, err
	}
	r.Window, r.CPU, r.HWMKiB = time.Since(t0).Seconds(), st.CPU-st0.CPU, st.HWMKiB
	if self, err := ReadProcStat(os.Getpid()); err == nil {
		r.ProbeCPU = self.OwnCPU
	}
	if r.Rounds > 0 {
		r.RoundCost /= float64(r.Rounds)
	}
	return r, nil
}

// StatSpec names a process.
type StatSpec struct {
	Pid int `json:"pid"`
}

// QuietSpec: wait until the machine's CPU is busy less than MaxBusy
// (0..1) over a WindowS window, for at most TimeoutS.
type QuietSpec struct {
	MaxBusy  float64 `json:"maxBusy"`
	WindowS  float64 `json:"windowS"`
	TimeoutS float64 `json:"timeoutS"`
}

// QuietResult: how long it took and the last window's busy fraction.
type QuietResult struct {
	Waited float64 `json:"waited"`
	Busy   float64 `json:"busy"`
	Quiet  bool    `json:"quiet"`
}

// Quiet runs a QuietSpec.
func Quiet(s QuietSpec) (QuietResult, error) {
	start := time.Now()
	for {
		b, err := Busy(secs(s.WindowS))
		if err != nil {
			return QuietResult{}, err
		}
		r := QuietResult{Waited: time.Since(start).Seconds(), Busy: b, Quiet: b <= s.MaxBusy}
		if r.Quiet || r.Waited > s.TimeoutS {
			return r, nil
		}
	}
}

// TimeSpec runs a command (through sh -c).
type TimeSpec struct {
	Script string `json:"script"`
}

// TimeResult: wall time and the CPU time of the command and its children.
type TimeResult struct {
	Wall   float64 `json:"wall"`
	CPU    float64 `json:"cpu"`
	Output string  `json:"output,omitempty"`
}

// Time runs a TimeSpec; a failing command is an error with its output.
func Time(s TimeSpec) (TimeResult, error) {
	cmd := exec.Command("sh", "-ec", s.Script)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	r := TimeResult{Wall: time.Since(start).Seconds()}
	if len(out) > 4096 {
		out = out[len(out)-4096:]
	}
	r.Output = string(out)
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.CPU = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
		}
	}
	if err != nil {
		return r, fmt.Errorf("%s: %v: %s", s.Script, err, out)
	}
	return r, nil
}

// CostsResult is what the probe's ways of reading IPVS cost at the current
// table size, in seconds.
type CostsResult struct {
	Counts       Counts  `json:"counts"`
	ProcRead     float64 `json:"procRead"`     // /proc/net/ip_vs, counted
	ServicesDump float64 `json:"servicesDump"` // netlink dump of the virtual servers
	Lookup       float64 `json:"lookup"`       // one virtual server and its real servers
}

// Costs measures the probe's reads once each.
func Costs() (CostsResult, error) {
	var r CostsResult
	var table procIPVS
	t := time.Now()
	c, err := table.Count()
	if err != nil {
		return r, err
	}
	r.Counts, r.ProcRead = c, time.Since(t).Seconds()
	l, err := newIPVSLookup()
	if err != nil {
		return r, err
	}
	defer l.Close()
	t = time.Now()
	svcs, err := l.h.GetServices()
	if err != nil {
		return r, err
	}
	r.ServicesDump = time.Since(t).Seconds()
	if len(svcs) > 0 {
		k := VSKey(fmt.Sprintf("TCP/%s:%d", svcs[0].Address, svcs[0].Port))
		t = time.Now()
		if _, err := l.Holds(Expect{VS: k, RS: "192.0.2.1:1", Present: true}); err != nil {
			return r, err
		}
		r.Lookup = time.Since(t).Seconds()
	}
	return r, nil
}
