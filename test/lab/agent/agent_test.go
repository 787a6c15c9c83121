package agent

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newAgent(t *testing.T) (*Client, string) {
	t.Helper()
	dir := t.TempDir()
	srv := httptest.NewServer(NewServer(dir).Handler())
	t.Cleanup(srv.Close)
	return NewClient(srv.URL), dir
}

func TestExec(t *testing.T) {
	c, _ := newAgent(t)
	ctx := context.Background()
	tests := []struct {
		name           string
		req            ExecRequest
		code           int
		stdout, stderr string
	}{
		{"stdout", ExecRequest{Argv: []string{"sh", "-c", "echo hello"}}, 0, "hello\n", ""},
		{"stderr and exit code", ExecRequest{Argv: []string{"sh", "-c", "echo oops >&2; exit 3"}}, 3, "", "oops\n"},
		{"stdin", ExecRequest{Argv: []string{"cat"}, Stdin: []byte("in")}, 0, "in", ""},
		{"env", ExecRequest{Argv: []string{"sh", "-c", "echo $LAB_X"}, Env: []string{"LAB_X=42"}}, 0, "42\n", ""},
		{"missing binary", ExecRequest{Argv: []string{"/nonexistent/cmd"}}, 127, "", "agent: "},
		{"timeout", ExecRequest{Argv: []string{"sleep", "30"}, TimeoutSeconds: 1}, -1, "", "timed out"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code, err := c.Exec(ctx, tt.req, &out, &errb)
			if err != nil {
				t.Fatal(err)
			}
			if tt.code >= 0 && code != tt.code || tt.code < 0 && code == 0 {
				t.Errorf("exit code %d, want %d", code, tt.code)
			}
			if out.String() != tt.stdout {
				t.Errorf("stdout %q, want %q", out.String(), tt.stdout)
			}
			if !strings.Contains(errb.String(), tt.stderr) {
				t.Errorf("stderr %q, want it to contain %q", errb.String(), tt.stderr)
			}
		})
	}
}

func TestDaemonLifecycle(t *testing.T) {
	c, dir := newAgent(t)
	ctx := context.Background()
	spec := DaemonSpec{Name: "d1", Argv: []string{"sh", "-c", "echo started; exec sleep 60"}}
	if _, err := c.StartDaemon(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartDaemon(ctx, spec); err == nil {
		t.Fatal("starting a running daemon twice must fail")
	}
	list, err := c.Daemons(ctx)
	if err != nil || len(list) != 1 || !list[0].Running {
		t.Fatalf("daemons %+v (err %v), want d1 running", list, err)
	}
	st, err := c.StopDaemon(ctx, SignalRequest{Name: "d1", TimeoutSeconds: 5})
	if err != nil || st.Running {
		t.Fatalf("stop: %+v, %v", st, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		log, _ := os.ReadFile(filepath.Join(dir, "d1.log"))
		if strings.Contains(string(log), "started") && strings.Contains(string(log), "exited") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon log lacks its output and exit: %q", log)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A stopped daemon can be started again under the same name.
	if _, err := c.StartDaemon(ctx, spec); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if _, err := c.SignalDaemon(ctx, SignalRequest{Name: "d1", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StopDaemon(ctx, SignalRequest{Name: "nope"}); err == nil {
		t.Fatal("stopping an unknown daemon must fail")
	}
}
