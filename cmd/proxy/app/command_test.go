package app

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
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

func writeFile(t *testing.T, data string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCommandConfigFile(t *testing.T) {
	path := writeFile(t, header+"ipvs:\n  scheduler: wlc\n  syncPeriod: 1m\nclusterCIDR: 10.244.0.0/16\nlogging:\n  verbosity: 2\n")
	tests := []struct {
		name    string
		args    []string
		wantRun bool
		wantErr []string
		check   func(*testing.T, *Options)
	}{
		{
			name:    "file reaches run, flags override it",
			args:    []string{"--config=" + path, "--ipvs-scheduler=sh", "-v=4"},
			wantRun: true,
			check: func(t *testing.T, o *Options) {
				if o.IPVSScheduler != "sh" || o.IPVSSyncPeriod != time.Minute || !reflect.DeepEqual(o.ClusterCIDRs, []string{"10.244.0.0/16"}) ||
					o.Logging.Verbosity != 4 {
					t.Errorf("options: %+v, verbosity %d", o, o.Logging.Verbosity)
				}
			},
		},
		{
			name:    "file's logging applies",
			args:    []string{"--config=" + path},
			wantRun: true,
			check: func(t *testing.T, o *Options) {
				if o.Logging.Verbosity != 2 {
					t.Errorf("verbosity %d, want the file's 2", o.Logging.Verbosity)
				}
			},
		},
		{
			name:    "unknown field stops before run",
			args:    []string{"--config=" + writeFile(t, header+"ipvs:\n  shceduler: rr\n")},
			wantErr: []string{"--config ", `unknown field "ipvs.shceduler"`},
		},
		{
			name:    "wrong mode stops before run",
			args:    []string{"--config=" + writeFile(t, header+"mode: iptables\n")},
			wantErr: []string{`mode: "iptables" is not supported`},
		},
		{
			name:    "invalid value names the file's field",
			args:    []string{"--config=" + writeFile(t, header+"ipvs:\n  scheduler: fast\n")},
			wantErr: []string{"invalid flags", "ipvs.scheduler in ", `unknown scheduler "fast"`},
		},
		{
			name:    "unknown feature gate",
			args:    []string{"--feature-gates=IPVSTurbo=true"},
			wantErr: []string{"--feature-gates: unrecognized feature gate: IPVSTurbo"},
		},
		{
			name:    "alpha logging option without its gate",
			args:    []string{"--log-text-split-stream"},
			wantErr: []string{"logging flags", "LoggingAlphaOptions"},
		},
		{
			name:    "feature gate reaches logging",
			args:    []string{"--feature-gates=LoggingAlphaOptions=true", "--log-text-split-stream"},
			wantRun: true,
		},
		{
			name:    "file's feature gate reaches logging",
			args:    []string{"--config=" + writeFile(t, header+"featureGates:\n  LoggingAlphaOptions: true\n"), "--log-text-split-stream"},
			wantRun: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			_, err := execute(t, func(_ context.Context, o *Options) error {
				ran = true
				if tc.check != nil {
					tc.check(t, o)
				}
				return nil
			}, tc.args...)
			if ran != tc.wantRun {
				t.Errorf("run called = %v, want %v", ran, tc.wantRun)
			}
			if len(tc.wantErr) == 0 && err != nil {
				t.Fatalf("Execute: %v", err)
			}
			for _, w := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("Execute error = %v, want containing %q", err, w)
				}
			}
		})
	}
}

// TestCommandWriteConfig: --write-config-to writes the effective
// configuration and exits without running; the file gives the same
// options back through --config.
func TestCommandWriteConfig(t *testing.T) {
	in := writeFile(t, header+"ipvs:\n  scheduler: wlc\nclusterCIDR: 10.244.0.0/16\n")
	out := filepath.Join(t.TempDir(), "effective.yaml")
	args := []string{"--config=" + in, "--ipvs-strict-arp", "--ipvs-sync-period=45s", "--metrics-bind-address=0.0.0.0:9999"}
	// Logging is applied once per execute, and reset at the end of a
	// (sub)test: one execute per subtest.
	run := func(name string, run RunFunc, args ...string) error {
		var err error
		t.Run(name, func(t *testing.T) { _, err = execute(t, run, args...) })
		return err
	}
	if err := run("write", func(context.Context, *Options) error {
		t.Error("run called with --write-config-to")
		return nil
	}, append(args, "--write-config-to="+out)...); err != nil {
		t.Fatalf("--write-config-to: %v", err)
	}

	var direct, reloaded *Options
	if err := run("direct", func(_ context.Context, o *Options) error { direct = o; return nil }, args...); err != nil {
		t.Fatal(err)
	}
	if err := run("reload", func(_ context.Context, o *Options) error { reloaded = o; return nil }, "--config="+out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fileView(direct), fileView(reloaded)) {
		t.Errorf("options from the written file:\n got %+v\nwant %+v", fileView(reloaded), fileView(direct))
	}
	if reloaded.IPVSScheduler != "wlc" || !reloaded.IPVSStrictARP || reloaded.IPVSSyncPeriod != 45*time.Second || reloaded.MetricsBindAddress != "0.0.0.0:9999" {
		t.Errorf("reloaded options: %+v", reloaded)
	}

	err := run("disabled healthz", func(context.Context, *Options) error { return nil }, "--healthz-bind-address=", "--write-config-to="+out)
	if err == nil || !strings.Contains(err.Error(), "--healthz-bind-address is empty") {
		t.Errorf("disabled healthz with --write-config-to: error %v", err)
	}
}
