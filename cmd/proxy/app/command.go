package app

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
)

// CommandName is the binary's name.
const CommandName = "kube-ipvs-proxy"

// RunFunc runs the proxy until ctx is cancelled (SIGTERM or SIGINT) or it
// fails. o has been validated and logging is set up.
type RunFunc func(ctx context.Context, o *Options) error

// NewCommand returns the proxy's command: it parses and validates the
// flags, applies the logging flags as kube-proxy does, and calls run with
// a context cancelled on SIGTERM or SIGINT. A second signal kills the
// process at once, for a shutdown that hangs.
func NewCommand(run RunFunc) *cobra.Command {
	o := NewOptions()
	cmd := &cobra.Command{
		Use:   CommandName,
		Short: "IPVS Service proxy for Kubernetes, a drop-in replacement for kube-proxy in IPVS mode",
		Long: `kube-ipvs-proxy runs on each node and programs IPVS virtual servers, ipsets
and iptables rules so that traffic to Kubernetes Services reaches their
endpoints. It accepts kube-proxy's IPVS-mode flags and serves the same
health and metrics endpoints.`,
		Args: cobra.NoArgs,
		// Usage after a runtime failure buries the error; the flag error
		// func below turns it back on for bad flags (as component-base's
		// cli.Run does).
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if run == nil {
				return fmt.Errorf("%s: no run function", CommandName)
			}
			// The configuration file goes under the flags given on the
			// command line, before anything is validated or applied.
			var fromFile map[string]string
			if o.ConfigFile != "" {
				var err error
				if fromFile, err = o.LoadConfigFile(cmd.Flags()); err != nil {
					return err
				}
			}
			featureGate, err := o.FeatureGate()
			if err != nil {
				return err
			}
			logs.InitLogs()
			defer logs.FlushLogs()
			if err := logsapi.ValidateAndApply(o.Logging, featureGate); err != nil {
				return fmt.Errorf("logging flags: %w", err)
			}
			cliflag.PrintFlags(cmd.Flags())
			if err := o.Validate(); err != nil {
				return fmt.Errorf("invalid flags:\n%w", annotateConfigErrors(err, o.ConfigFile, fromFile))
			}
			if o.WriteConfigTo != "" {
				flagOnly, err := o.WriteConfigFile()
				if err != nil {
					return err
				}
				klog.InfoS("Wrote the configuration", "file", o.WriteConfigTo)
				if len(flagOnly) > 0 {
					klog.InfoS("These flags have no configuration field and were not written; keep them on the command line", "flags", flagOnly)
				}
				return nil
			}

			parent := cmd.Context()
			if parent == nil {
				parent = context.Background()
			}
			sigCtx, stop := signal.NotifyContext(parent, syscall.SIGTERM, os.Interrupt)
			defer stop()
			go func() {
				<-sigCtx.Done()
				// Restore default signal handling so a second signal kills.
				stop()
			}()
			return run(klog.NewContext(sigCtx, klog.Background()), o)
		},
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		c.SilenceUsage = false
		return err
	})
	fs := cmd.Flags()
	// Accept kube-proxy's --ipvs_sync_period style too.
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	o.AddFlags(fs)
	// Subcommands have flags of their own; the root's RunE, the proxy,
	// never runs for them. No shell completion command: nothing to
	// complete.
	cmd.AddCommand(NewInspectCommand())
	cmd.CompletionOptions.DisableDefaultCmd = true
	return cmd
}
