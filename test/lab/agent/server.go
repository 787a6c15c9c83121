package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Server runs commands and daemons for the host.
type Server struct {
	LogDir string // where daemon logs go, /var/log/lab in the VM

	mu      sync.Mutex
	daemons map[string]*daemon
}

type daemon struct {
	spec    DaemonSpec
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
	logPath string
}

// NewServer returns a server writing daemon logs under logDir.
func NewServer(logDir string) *Server {
	return &Server{LogDir: logDir, daemons: map[string]*daemon{}}
}

// Handler returns the HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("POST /exec", s.handleExec)
	mux.HandleFunc("POST /daemon/start", s.handleStart)
	mux.HandleFunc("POST /daemon/stop", s.handleStop)
	mux.HandleFunc("POST /daemon/signal", s.handleSignal)
	mux.HandleFunc("GET /daemons", s.handleList)
	return mux
}

// command builds the process for argv, inside the named netns if any.
func command(ctx context.Context, netns string, argv, env []string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("empty argv")
	}
	if netns != "" {
		// ip netns exec NS CMD...: enters the namespace and its /etc/netns view.
		argv = append([]string{"ip", "netns", "exec", netns}, argv...)
	}
	var cmd *exec.Cmd
	if ctx != nil {
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Env = append(os.Environ(), env...)
	// Own process group, so a stop or timeout reaches every child.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// frameWriter serialises frames from stdout and stderr onto the response.
type frameWriter struct {
	mu   *sync.Mutex
	w    io.Writer
	f    http.Flusher
	kind byte
}

func (f frameWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := writeFrame(f.w, f.kind, p); err != nil {
		return 0, err
	}
	if f.f != nil {
		f.f.Flush()
	}
	return len(p), nil
}

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	var req ExecRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	timeout := 10 * time.Minute
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	cmd, err := command(ctx, req.Netns, req.Argv, req.Env)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// Kill the whole group when the client goes away or the timeout hits.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	cmd.Stdin = bytes.NewReader(req.Stdin)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	mu := &sync.Mutex{}
	cmd.Stdout = frameWriter{mu: mu, w: w, f: flusher, kind: frameStdout}
	cmd.Stderr = frameWriter{mu: mu, w: w, f: flusher, kind: frameStderr}
	code := 0
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			code = ee.ExitCode()
			if ctx.Err() != nil {
				fmt.Fprintf(cmd.Stderr, "agent: command timed out after %s\n", timeout)
			}
		default:
			fmt.Fprintf(cmd.Stderr, "agent: %v\n", err)
			code = 127
		}
	}
	mu.Lock()
	defer mu.Unlock()
	_ = writeFrame(w, frameExit, []byte(strconv.Itoa(code)))
}

func (s *Server) handleStart(w http.ResponseWriter, r *http.Request) {
	var spec DaemonSpec
	if err := json.NewDecoder(r.Body).Decode(&spec); err != nil || spec.Name == "" {
		http.Error(w, "bad request: need a name and argv", http.StatusBadRequest)
		return
	}
	st, err := s.start(spec)
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	json.NewEncoder(w).Encode(st)
}

func (s *Server) start(spec DaemonSpec) (DaemonStatus, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.daemons[spec.Name]; ok && d.running() {
		return DaemonStatus{}, fmt.Errorf("daemon %s is already running (pid %d)", spec.Name, d.cmd.Process.Pid)
	}
	cmd, err := command(nil, spec.Netns, spec.Argv, spec.Env)
	if err != nil {
		return DaemonStatus{}, err
	}
	logPath := filepath.Join(s.LogDir, spec.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return DaemonStatus{}, err
	}
	fmt.Fprintf(logf, "=== %s agent: starting %q\n", time.Now().Format(time.RFC3339), spec.Argv)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return DaemonStatus{}, err
	}
	d := &daemon{spec: spec, cmd: cmd, done: make(chan struct{}), logPath: logPath}
	s.daemons[spec.Name] = d
	go func() {
		d.exitErr = cmd.Wait()
		fmt.Fprintf(logf, "=== %s agent: exited: %v\n", time.Now().Format(time.RFC3339), d.exitErr)
		logf.Close()
		close(d.done)
	}()
	log.Printf("started %s (pid %d): %q", spec.Name, cmd.Process.Pid, spec.Argv)
	return d.status(), nil
}

func (d *daemon) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

func (d *daemon) status() DaemonStatus {
	st := DaemonStatus{DaemonSpec: d.spec, Pid: d.cmd.Process.Pid, Running: d.running(), LogPath: d.logPath}
	if !st.Running {
		st.Exit = fmt.Sprint(d.exitErr)
	}
	return st
}

func (s *Server) lookup(name string) (*daemon, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.daemons[name]
	if !ok {
		return nil, fmt.Errorf("no daemon named %s", name)
	}
	return d, nil
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request) {
	var req SignalRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	d, err := s.lookup(req.Name)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	sig := syscall.SIGTERM
	if req.Signal != 0 {
		sig = syscall.Signal(req.Signal)
	}
	timeout := 10 * time.Second
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds) * time.Second
	}
	if d.running() {
		_ = syscall.Kill(-d.cmd.Process.Pid, sig)
		select {
		case <-d.done:
		case <-time.After(timeout):
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.done
		}
	}
	json.NewEncoder(w).Encode(d.status())
}

func (s *Server) handleSignal(w http.ResponseWriter, r *http.Request) {
	var req SignalRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Signal == 0 {
		http.Error(w, "bad request: need name and signal", http.StatusBadRequest)
		return
	}
	d, err := s.lookup(req.Name)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if d.running() {
		// The signal goes to the daemon itself, not its group: a SIGKILL test
		// kills the proxy, not the tools it may be running.
		if err := d.cmd.Process.Signal(syscall.Signal(req.Signal)); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	json.NewEncoder(w).Encode(d.status())
}

func (s *Server) handleList(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	list := make([]DaemonStatus, 0, len(s.daemons))
	for _, d := range s.daemons {
		list = append(list, d.status())
	}
	s.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	json.NewEncoder(w).Encode(list)
}
