package probe

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"
)

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
