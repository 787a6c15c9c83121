package probe

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
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
