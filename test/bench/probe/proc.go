package probe

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTick is USER_HZ, the unit of the times in /proc/PID/stat.
const clockTick = 100

// ProcStat is what /proc/PID/stat and /proc/PID/status say about a process.
type ProcStat struct {
	// CPU is user + system time of the process and of its waited-for
	// children (upstream runs one ipset process per entry), in seconds.
	CPU float64 `json:"cpu"`
	// OwnCPU leaves the children out.
	OwnCPU float64 `json:"ownCpu"`
	// Age is how long ago the process started.
	Age float64 `json:"age"`
	// HWMKiB is the peak resident set size (VmHWM), RSSKiB the current one.
	HWMKiB int64 `json:"hwmKiB"`
	RSSKiB int64 `json:"rssKiB"`
}

// ReadProcStat reads a process's CPU time, age and memory.
func ReadProcStat(pid int) (ProcStat, error) {
	var st ProcStat
	buf, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	cpu, own, start, err := parseStat(buf)
	if err != nil {
		return st, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	st.CPU, st.OwnCPU = cpu, own
	st.Age = Uptime() - start
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	st.HWMKiB, st.RSSKiB = parseStatusKiB(status, "VmHWM:"), parseStatusKiB(status, "VmRSS:")
	return st, nil
}

// parseStat returns utime+stime+cutime+cstime, utime+stime and the start
// time (seconds since boot) from a /proc/PID/stat line.
func parseStat(buf []byte) (cpu, own, start float64, err error) {
	i := bytes.LastIndexByte(buf, ')')
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("no ')' in %q", buf)
	}
	// Fields after the command name, starting with field 3 (state).
	f := strings.Fields(string(buf[i+1:]))
	if len(f) < 20 {
		return 0, 0, 0, fmt.Errorf("short stat line %q", buf)
	}
	field := func(n int) (float64, error) { // n is the 1-based field number in proc(5)
		v, err := strconv.ParseInt(f[n-3], 10, 64)
		return float64(v) / clockTick, err
	}
	var t [4]float64
	for k, n := range []int{14, 15, 16, 17} {
		if t[k], err = field(n); err != nil {
			return 0, 0, 0, err
		}
	}
	if start, err = field(22); err != nil {
		return 0, 0, 0, err
	}
	return t[0] + t[1] + t[2] + t[3], t[0] + t[1], start, nil
}

func parseStatusKiB(buf []byte, key string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(buf))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, key) {
			f := strings.Fields(line[len(key):])
			if len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// Uptime is the time since boot (CLOCK_BOOTTIME, the clock of the start
// times in /proc/PID/stat), in seconds.
func Uptime() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// cpuTimes reads the first line of /proc/stat: total and idle (idle+iowait)
// jiffies of the whole machine.
func cpuTimes() (total, idle uint64, err error) {
	buf, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(buf), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("unexpected /proc/stat line %q", line)
	}
	for k, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, err
		}
		// guest and guest_nice (fields 9 and 10) are already in user and nice.
		if k >= 8 {
			break
		}
		total += v
		if k == 3 || k == 4 {
			idle += v
		}
	}
	return total, idle, nil
}

// Busy measures the fraction of the machine's CPU in use over d.
func Busy(d time.Duration) (float64, error) {
	t0, i0, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	time.Sleep(d)
	t1, i1, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	if t1 == t0 {
		return 0, nil
	}
	return 1 - float64(i1-i0)/float64(t1-t0), nil
}
