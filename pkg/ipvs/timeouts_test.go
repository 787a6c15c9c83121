package ipvs

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTimeoutsWith(t *testing.T) {
	for _, tc := range []struct {
		name            string
		tcp, fin, udp   time.Duration
		want            Timeouts
		wantErr         string
		wantCmd, wantTo string
	}{
		{name: "all unchanged", want: DefaultTimeouts, wantCmd: "ipvsadm --set 0 0 0"},
		{name: "upstream-like", tcp: 15 * time.Minute, fin: 30 * time.Second, udp: 5 * time.Second,
			want: Timeouts{TCP: 900 * time.Second, TCPFin: 30 * time.Second, UDP: 5 * time.Second}, wantCmd: "ipvsadm --set 900 30 5"},
		{name: "only udp", udp: 10 * time.Second,
			want: Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 10 * time.Second}, wantCmd: "ipvsadm --set 0 0 10"},
		{name: "rounded up, never to 0", tcp: 1500 * time.Millisecond, udp: time.Millisecond,
			want: Timeouts{TCP: 2 * time.Second, TCPFin: 120 * time.Second, UDP: time.Second}, wantCmd: "ipvsadm --set 2 0 1"},
		{name: "negative", fin: -time.Second, wantErr: "IPVS tcpfin timeout -1s is negative"},
		{name: "too large", tcp: 1 << 62, wantErr: "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DefaultTimeouts.With(tc.tcp, tc.fin, tc.udp)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %v, %v; want %v", got, err, tc.want)
			}
			if cmd := SetTimeoutsCmd(tc.tcp, tc.fin, tc.udp); cmd != tc.wantCmd {
				t.Errorf("command %q, want %q", cmd, tc.wantCmd)
			}
		})
	}
	if s := DefaultTimeouts.String(); s != "900 120 300" {
		t.Errorf("String() = %q", s)
	}
}

// The fake passes timeouts through as the kernel implementation does:
// zeros leave values alone, nothing is written when nothing changes.
func TestFakeSetTimeouts(t *testing.T) {
	f := NewFakeIPVS(nil)
	steps := []struct {
		tcp, fin, udp time.Duration
		fail          bool
		want          Timeouts
	}{
		{0, 0, 0, false, DefaultTimeouts},
		{time.Hour, 0, 30 * time.Second, false, Timeouts{time.Hour, 120 * time.Second, 30 * time.Second}},
		{time.Hour, 0, 0, false, Timeouts{time.Hour, 120 * time.Second, 30 * time.Second}}, // no change: not written
		{0, time.Minute, 0, true, Timeouts{time.Hour, 120 * time.Second, 30 * time.Second}},
		{0, time.Minute, 0, false, Timeouts{time.Hour, time.Minute, 30 * time.Second}},
	}
	for i, s := range steps {
		if s.fail {
			f.FailOn(SetTimeoutsCmd(s.tcp, s.fin, s.udp), errBoom)
		}
		err := f.SetTimeouts(s.tcp, s.fin, s.udp)
		if s.fail != errors.Is(err, errBoom) || (!s.fail && err != nil) {
			t.Errorf("step %d: error %v", i, err)
		}
		f.FailOn(SetTimeoutsCmd(s.tcp, s.fin, s.udp), nil)
		if got := f.Timeouts(); got != s.want {
			t.Errorf("step %d: timeouts %v, want %v", i, got, s.want)
		}
	}
	if err := f.SetTimeouts(-1, 0, 0); err == nil {
		t.Error("negative timeout accepted")
	}
	want := []string{"ipvsadm --set 3600 0 30", "ipvsadm --set 0 60 0 # failed: boom", "ipvsadm --set 0 60 0"}
	if got := f.Log().Lines(); !slices.Equal(got, want) {
		t.Errorf("log %q, want %q", got, want)
	}
}
