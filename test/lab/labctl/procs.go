package labctl

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Host processes (etcd, the API server, ...) run detached in their own
// session, with a pid file and a log under the state dir, so that they
// outlive the `lab` command that started them and `lab down` finds them.

func (c Config) pidFile(name string) string { return c.path("pids", name+".pid") }

// LogFile is the log of a host process.
func (c Config) LogFile(name string) string { return c.path("logs", name+".log") }

func (c Config) startHostProc(name string, argv []string) error {
	if pid, ok := c.hostProcPid(name); ok {
		return fmt.Errorf("%s is already running (pid %d)", name, pid)
	}
	for _, d := range []string{c.path("pids"), c.path("logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(c.LogFile(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.Dir = c.StateDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	if err := os.WriteFile(c.pidFile(name), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return err
	}
	// Reap it if it dies while we are still running; `lab up` exits soon.
	go cmd.Wait()
	return nil
}

// hostProcPid returns the pid of a running host process started by the lab.
func (c Config) hostProcPid(name string) (int, bool) {
	buf, err := os.ReadFile(c.pidFile(name))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, alive(pid)
}

func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	// A zombie is not alive.
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// stopHostProc sends SIGTERM to the process's session, then SIGKILL.
func (c Config) stopHostProc(name string, grace time.Duration) error {
	pid, ok := c.hostProcPid(name)
	if ok {
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		deadline := time.Now().Add(grace)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if alive(pid) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			for i := 0; alive(pid) && i < 50; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
		if alive(pid) {
			return fmt.Errorf("%s (pid %d) did not stop", name, pid)
		}
	}
	if err := os.Remove(c.pidFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// hostProcs lists the names with a pid file.
func (c Config) hostProcs() []string {
	matches, _ := filepath.Glob(c.path("pids", "*.pid"))
	names := make([]string, 0, len(matches))
	for _, m := range matches {
		names = append(names, strings.TrimSuffix(filepath.Base(m), ".pid"))
	}
	return names
}

// tailFile returns the last n lines of a file, for failure reports.
func tailFile(path string, n int) string {
	buf, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(buf), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
