package ipvs

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Timeouts are the IPVS connection timeouts, one set for the whole table
// (ipvsadm -L --timeout): how long an idle connection entry is kept.
type Timeouts struct {
	// TCP is for established TCP connections.
	TCP time.Duration
	// TCPFin is for TCP connections after a FIN (FIN_WAIT, TIME_WAIT...).
	TCPFin time.Duration
	// UDP is for UDP "connections".
	UDP time.Duration
}

// DefaultTimeouts are the kernel's defaults ("Timeout (tcp tcpfin udp):
// 900 120 300").
var DefaultTimeouts = Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second}

// String gives the three values in seconds, as ipvsadm --set takes them:
// "900 120 300".
func (t Timeouts) String() string { return timeoutsString(t.TCP, t.TCPFin, t.UDP) }

// With returns t with the non-zero values replaced, rounded up to whole
// seconds (the kernel counts in seconds; a sub-second value must not turn
// into 0, which means "unchanged"). Negative values, and values the
// kernel's 32-bit seconds cannot hold, are an error.
func (t Timeouts) With(tcp, tcpFin, udp time.Duration) (Timeouts, error) {
	for _, v := range []struct {
		name string
		d    time.Duration
		dst  *time.Duration
	}{{"tcp", tcp, &t.TCP}, {"tcpfin", tcpFin, &t.TCPFin}, {"udp", udp, &t.UDP}} {
		switch {
		case v.d < 0:
			return t, fmt.Errorf("IPVS %s timeout %s is negative", v.name, v.d)
		case v.d == 0:
			continue // unchanged
		}
		secs := (v.d + time.Second - 1) / time.Second
		if secs > math.MaxInt32 {
			return t, fmt.Errorf("IPVS %s timeout %s is too large", v.name, v.d)
		}
		*v.dst = secs * time.Second
	}
	return t, nil
}

// SetTimeoutsCmd is the command line of IPVS.SetTimeouts, e.g.
// "ipvsadm --set 900 120 300" (0: unchanged), as the fakes record it.
func SetTimeoutsCmd(tcp, tcpFin, udp time.Duration) string {
	return "ipvsadm --set " + timeoutsString(tcp, tcpFin, udp)
}

func timeoutsString(ds ...time.Duration) string {
	var b []byte
	for i, d := range ds {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendInt(b, int64((d+time.Second-1)/time.Second), 10)
	}
	return string(b)
}
