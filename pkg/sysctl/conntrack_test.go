package sysctl

import (
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

type fakeHashsize struct {
	v      int
	setErr error
	sets   []int
}

func (f *fakeHashsize) Get() (int, error) { return f.v, nil }
func (f *fakeHashsize) Set(v int) error {
	if f.setErr != nil {
		return f.setErr
	}
	f.v = v
	f.sets = append(f.sets, v)
	return nil
}

func kernelConntrack() map[string]int {
	return map[string]int{
		ConntrackMax:                   65536,
		ConntrackTCPTimeoutEstablished: 432000,
		ConntrackTCPTimeoutCloseWait:   60,
		ConntrackTCPBeLiberal:          0,
		ConntrackUDPTimeout:            30,
		ConntrackUDPTimeoutStream:      120,
	}
}

// The defaults of kube-proxy's flags.
func defaultConntrack(cpus int) ConntrackOptions {
	return ConntrackOptions{MaxPerCore: DefaultConntrackMaxPerCore, Min: DefaultConntrackMin,
		TCPEstablishedTimeout: DefaultConntrackTCPEstablished, TCPCloseWaitTimeout: DefaultConntrackTCPCloseWait, NumCPU: cpus}
}

func TestConntrackMaxFor(t *testing.T) {
	for _, tt := range []struct {
		name string
		o    ConntrackOptions
		want int
	}{
		{"off", ConntrackOptions{MaxPerCore: 0, Min: 131072, NumCPU: 8}, 0},
		{"min wins", ConntrackOptions{MaxPerCore: 32768, Min: 131072, NumCPU: 2}, 131072},
		{"scaled", ConntrackOptions{MaxPerCore: 32768, Min: 131072, NumCPU: 8}, 262144},
		{"capped", ConntrackOptions{MaxPerCore: 32768, Min: 131072, NumCPU: 64}, 1048576},
		{"unknown CPUs count as one", ConntrackOptions{MaxPerCore: 200000, Min: 0}, 200000},
	} {
		if got := ConntrackMaxFor(tt.o); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestEnsureConntrackSysctls(t *testing.T) {
	refused := syscall.EACCES
	for _, tt := range []struct {
		name       string
		opts       ConntrackOptions
		kernel     map[string]int
		hashsize   int
		failSet    string // this sysctl refuses writes
		hashErr    error
		wantSets   []string
		wantHashes []int
		wantErr    string
	}{
		{
			name: "defaults on 8 CPUs", opts: defaultConntrack(8), kernel: kernelConntrack(), hashsize: 16384,
			wantSets:   []string{ConntrackMax + "=262144", ConntrackTCPTimeoutEstablished + "=86400", ConntrackTCPTimeoutCloseWait + "=3600"},
			wantHashes: []int{65536},
		},
		{
			name: "a larger table stays", opts: defaultConntrack(2),
			kernel:   func() map[string]int { k := kernelConntrack(); k[ConntrackMax] = 524288; return k }(),
			hashsize: 131072,
			wantSets: []string{ConntrackTCPTimeoutEstablished + "=86400", ConntrackTCPTimeoutCloseWait + "=3600"},
		},
		{
			name: "every flag", kernel: kernelConntrack(), hashsize: 1 << 20,
			opts: ConntrackOptions{TCPEstablishedTimeout: time.Hour, TCPCloseWaitTimeout: time.Minute, TCPBeLiberal: true,
				UDPTimeout: 45 * time.Second, UDPStreamTimeout: 3 * time.Minute},
			wantSets: []string{ConntrackTCPTimeoutEstablished + "=3600", ConntrackUDPTimeout + "=45",
				ConntrackUDPTimeoutStream + "=180", ConntrackTCPBeLiberal + "=1"},
		},
		{
			name: "already set: nothing written", kernel: func() map[string]int {
				k := kernelConntrack()
				k[ConntrackMax], k[ConntrackTCPTimeoutEstablished], k[ConntrackTCPTimeoutCloseWait] = 131072, 86400, 3600
				return k
			}(), opts: defaultConntrack(1), hashsize: 32768,
		},
		{
			// A node network namespace: the table size is the host's.
			name: "table size refused: logged, timeouts still set", opts: defaultConntrack(2), kernel: kernelConntrack(),
			hashsize: 16384, failSet: ConntrackMax,
			wantSets: []string{ConntrackTCPTimeoutEstablished + "=86400", ConntrackTCPTimeoutCloseWait + "=3600"},
		},
		{
			name: "hashsize refused: logged", opts: defaultConntrack(2), kernel: kernelConntrack(), hashsize: 16384, hashErr: errors.New("operation not supported"),
			wantSets: []string{ConntrackMax + "=131072", ConntrackTCPTimeoutEstablished + "=86400", ConntrackTCPTimeoutCloseWait + "=3600"},
		},
		{
			name: "timeout refused: error", opts: defaultConntrack(2), kernel: kernelConntrack(), hashsize: 1 << 20,
			failSet: ConntrackTCPTimeoutEstablished, wantSets: []string{ConntrackMax + "=131072"},
			wantErr: "nf_conntrack_tcp_timeout_established",
		},
		{
			name: "no nf_conntrack: error with a hint", opts: ConntrackOptions{TCPEstablishedTimeout: time.Hour}, kernel: map[string]int{},
			wantErr: "modprobe nf_conntrack",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := NewFake(tt.kernel, "6.1.0")
			if tt.failSet != "" {
				s.FailSet(tt.failSet, refused)
			}
			h := &fakeHashsize{v: tt.hashsize, setErr: tt.hashErr}
			tt.opts.Hashsize = h
			err := EnsureConntrackSysctls(s, tt.opts)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("error %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if got := s.Sets(); !slices.Equal(got, tt.wantSets) {
				t.Errorf("sets %q, want %q", got, tt.wantSets)
			}
			if !slices.Equal(h.sets, tt.wantHashes) {
				t.Errorf("hashsize sets %v, want %v", h.sets, tt.wantHashes)
			}
		})
	}
}
