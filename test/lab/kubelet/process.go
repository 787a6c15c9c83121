package kubelet

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Restart backoff, like the kubelet's CrashLoopBackOff but short enough for
// tests that crash a pod on purpose.
const (
	minRestartBackoff = 1 * time.Second
	maxRestartBackoff = 10 * time.Second
	// A process that ran this long resets the backoff.
	stableRun = 10 * time.Second
)

// exitInfo is how a process ended.
type exitInfo struct {
	Code       int
	Signal     string
	StartedAt  time.Time
	FinishedAt time.Time
}

func (e exitInfo) String() string {
	if e.Signal != "" {
		return fmt.Sprintf("code %d, signal %s", e.Code, e.Signal)
	}
	return fmt.Sprintf("code %d", e.Code)
}

// procState is what the status needs to know about the container process.
type procState struct {
	Running   bool
	StartedAt time.Time // of the current run, zero while not running
	// Generation counts starts, so readiness can restart with the process.
	Generation int
	Restarts   int32
	LastExit   *exitInfo
	// Waiting is the reason while not running (ContainerCreating,
	// CrashLoopBackOff).
	Waiting string
}

// supervisor keeps one process running (restartPolicy Always) in its own
// process group, so teardown can signal everything the process started.
type supervisor struct {
	argv     []string // full command, including `ip netns exec pX`
	env      []string
	logPath  string
	logf     func(format string, args ...any)
	killWait time.Duration

	mu       sync.Mutex
	state    procState
	pgid     int
	stopping bool

	changed chan struct{} // poked (never blocks) on every state change
	stopCh  chan struct{}
	done    chan struct{}
}

func newSupervisor(argv, env []string, logPath string, restartsBefore int32, killWait time.Duration, logf func(string, ...any)) *supervisor {
	return &supervisor{
		argv: argv, env: env, logPath: logPath, logf: logf, killWait: killWait,
		state:   procState{Waiting: "ContainerCreating", Restarts: restartsBefore},
		changed: make(chan struct{}, 1),
		stopCh:  make(chan struct{}),
		done:    make(chan struct{}),
	}
}

func (s *supervisor) snapshot() procState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state
	if st.LastExit != nil {
		e := *st.LastExit
		st.LastExit = &e
	}
	return st
}

func (s *supervisor) poke() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// run starts the process and restarts it until stop.
func (s *supervisor) run() {
	defer close(s.done)
	backoff := minRestartBackoff
	for first := true; ; first = false {
		if !first {
			s.mu.Lock()
			s.state.Restarts++
			s.mu.Unlock()
		}
		started, exit := s.runOnce()
		if s.isStopping() {
			return
		}
		if started && exit.FinishedAt.Sub(exit.StartedAt) >= stableRun {
			backoff = minRestartBackoff
		}
		s.mu.Lock()
		s.state.Running = false
		s.state.StartedAt = time.Time{}
		s.state.LastExit = &exit
		s.state.Waiting = "CrashLoopBackOff"
		s.mu.Unlock()
		s.poke()
		s.logf("process exited (%s), restarting in %s", exit, backoff)
		select {
		case <-s.stopCh:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxRestartBackoff)
	}
}

func (s *supervisor) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// runOnce runs the process to its end. A process that cannot be started
// counts as one that exited at once.
func (s *supervisor) runOnce() (bool, exitInfo) {
	now := time.Now()
	fail := func(err error) (bool, exitInfo) {
		s.logf("process start failed: %v", err)
		return false, exitInfo{Code: 128, StartedAt: now, FinishedAt: time.Now()}
	}
	if err := os.MkdirAll(filepath.Dir(s.logPath), 0o755); err != nil {
		return fail(err)
	}
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fail(err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "=== %s labkubelet: starting %q\n", now.Format(time.RFC3339), s.argv)

	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Env = s.env
	cmd.Dir = "/"
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		return false, exitInfo{}
	}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fail(err)
	}
	s.pgid = cmd.Process.Pid
	s.state = procState{
		Running: true, StartedAt: now, Generation: s.state.Generation + 1,
		Restarts: s.state.Restarts, LastExit: s.state.LastExit,
	}
	s.mu.Unlock()
	s.poke()
	s.logf("process started (pid %d)", cmd.Process.Pid)

	err = cmd.Wait()
	end := time.Now()
	s.mu.Lock()
	s.pgid = 0
	s.mu.Unlock()
	exit := exitInfo{StartedAt: now, FinishedAt: end}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			exit.Code = 128 + int(ws.Signal())
			exit.Signal = ws.Signal().String()
		} else {
			exit.Code = ee.ExitCode()
		}
	default:
		exit.Code = 128
	}
	fmt.Fprintf(logFile, "=== %s labkubelet: process exited (%s)\n", end.Format(time.RFC3339), exit)
	return true, exit
}

// stop ends supervision: SIGTERM to the process group, SIGKILL after
// killWait, and no more restarts. It returns once the process is gone.
func (s *supervisor) stop() {
	s.mu.Lock()
	if !s.stopping {
		s.stopping = true
		close(s.stopCh)
	}
	pgid := s.pgid
	s.mu.Unlock()
	if pgid > 0 {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(s.killWait):
			s.logf("process group %d still running after %s, sending SIGKILL", pgid, s.killWait)
		}
		// Also catches children left behind by a leader that did exit.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	<-s.done
	s.mu.Lock()
	s.state.Running = false
	s.state.Waiting = "Terminated"
	s.mu.Unlock()
}

// abandon stops supervising without touching the process, for a kubelet
// that exits and leaves its pods running.
func (s *supervisor) abandon() {
	s.mu.Lock()
	if !s.stopping {
		s.stopping = true
		close(s.stopCh)
	}
	s.mu.Unlock()
}
