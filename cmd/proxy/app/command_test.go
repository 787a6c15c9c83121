package app

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/component-base/cli"
	logsapi "k8s.io/component-base/logs/api/v1"
)

// execute runs NewCommand(run) with args; logging may be applied only once
// per process, so it is reset afterwards.
func execute(t *testing.T, run RunFunc, args ...string) (string, error) {
	t.Helper()
	t.Cleanup(func() {
		if err := logsapi.ResetForTest(nil); err != nil {
			t.Errorf("resetting logging: %v", err)
		}
	})
	cmd := NewCommand(run)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestCommand(t *testing.T) {
	errRun := errors.New("run failed")
	tests := []struct {
		name      string
		args      []string
		runErr    error
		wantRun   bool
		wantErr   string
		wantUsage bool
		check     func(*testing.T, *Options)
	}{
		{
			name:    "defaults run",
			wantRun: true,
			check: func(t *testing.T, o *Options) {
				if o.IPVSSyncPeriod != 30*time.Second || o.HealthzBindAddress != DefaultHealthzBindAddress {
					t.Errorf("defaults not applied: %+v", o)
				}
			},
		},
		{
			name:    "flags reach run",
			args:    []string{"--ipvs-scheduler=sh", "--ipvs-strict-arp", "-v=3", "--cleanup"},
			wantRun: true,
			check: func(t *testing.T, o *Options) {
				if o.IPVSScheduler != "sh" || !o.IPVSStrictARP || !o.Cleanup || o.Logging.Verbosity != 3 {
					t.Errorf("flags not parsed: %+v", o)
				}
			},
		},
		{
			name:    "run error returned",
			runErr:  errRun,
			wantRun: true,
			wantErr: "run failed",
		},
		{
			name:    "invalid options stop before run",
			args:    []string{"--ipvs-sync-period=0", "--ipvs-scheduler=bogus"},
			wantErr: "--ipvs-sync-period",
		},
		{
			name:      "unknown flag prints usage",
			args:      []string{"--proxy-mode-typo=ipvs"},
			wantErr:   "unknown flag",
			wantUsage: true,
		},
		{
			name:      "bad flag value prints usage",
			args:      []string{"--healthz-bind-address=nowhere"},
			wantErr:   "is not IP or IP:port",
			wantUsage: true,
		},
		{
			name:    "unknown logging format",
			args:    []string{"--logging-format=yaml"},
			wantErr: "logging flags",
		},
		{
			name:    "positional args rejected",
			args:    []string{"extra"},
			wantErr: "unknown command",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			out, err := execute(t, func(ctx context.Context, o *Options) error {
				ran = true
				if ctx.Err() != nil {
					t.Errorf("context already done: %v", ctx.Err())
				}
				if tc.check != nil {
					tc.check(t, o)
				}
				return tc.runErr
			}, tc.args...)
			if ran != tc.wantRun {
				t.Errorf("run called = %v, want %v", ran, tc.wantRun)
			}
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Execute: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Execute error = %v, want containing %q", err, tc.wantErr)
			}
			if hasUsage := strings.Contains(out, "Usage:"); hasUsage != tc.wantUsage {
				t.Errorf("usage printed = %v, want %v; output:\n%s", hasUsage, tc.wantUsage, out)
			}
		})
	}
}

func TestCommandNilRun(t *testing.T) {
	if _, err := execute(t, nil); err == nil {
		t.Error("nil run: want error")
	}
}

// TestCommandSignal checks that SIGTERM cancels run's context instead of
// killing the process.
func TestCommandSignal(t *testing.T) {
	_, err := execute(t, func(ctx context.Context, _ *Options) error {
		if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("context not cancelled by SIGTERM")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCommandWithCLIRun checks the command works under component-base's
// cli.Run, which kube-proxy's main uses and which adds klog's flags.
func TestCommandWithCLIRun(t *testing.T) {
	t.Cleanup(func() { _ = logsapi.ResetForTest(nil) })
	var verbosity uint32
	cmd := NewCommand(func(_ context.Context, o *Options) error {
		verbosity = uint32(o.Logging.Verbosity)
		return nil
	})
	cmd.SetArgs([]string{"-v=2", "--ipvs-sync-period=10s"})
	if code := cli.Run(cmd); code != 0 {
		t.Fatalf("cli.Run exit code %d", code)
	}
	if verbosity != 2 {
		t.Errorf("verbosity = %d, want 2", verbosity)
	}
}
