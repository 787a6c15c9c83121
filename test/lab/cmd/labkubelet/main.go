// Command labkubelet is the lab's kubelet and scheduler.
//
//	labkubelet run --node node1 --kubeconfig FILE --pod-cidr 10.244.1.0/24 \
//	    --node-netns node1 --echo-binary /path/to/labecho [--state-dir /run/lab] \
//	    [--teardown-on-exit] [--kill-wait 2s]
//	labkubelet schedule --kubeconfig FILE --nodes node1,node2
//
// See package kubelet.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/kubelet"
)

const usage = `usage:
  labkubelet run --node NAME --kubeconfig FILE --pod-cidr CIDR --node-netns NETNS
                 --echo-binary PATH [--state-dir /run/lab] [--teardown-on-exit] [--kill-wait 2s]
  labkubelet schedule --kubeconfig FILE --nodes node1,node2
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stderr))
}

func realMain(args []string, stderr io.Writer) int {
	if len(args) < 1 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	logger := log.New(stderr, "", log.LstdFlags|log.Lmicroseconds)
	switch args[0] {
	case "run":
		return runMain(ctx, args[1:], stderr, logger)
	case "schedule":
		return scheduleMain(ctx, args[1:], stderr, logger)
	case "-h", "--help", "help":
		fmt.Fprint(stderr, usage)
		return 0
	}
	fmt.Fprintf(stderr, "unknown command %q\n%s", args[0], usage)
	return 2
}

func client(kubeconfig string) (kubernetes.Interface, error) {
	if kubeconfig == "" {
		return nil, fmt.Errorf("--kubeconfig is required")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "labkubelet"
	return kubernetes.NewForConfig(cfg)
}

func runMain(ctx context.Context, args []string, stderr io.Writer, logger *log.Logger) int {
	fs := flag.NewFlagSet("labkubelet run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg kubelet.Config
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the API server")
	fs.StringVar(&cfg.NodeName, "node", "", "node name (the Node object and spec.nodeName)")
	fs.StringVar(&cfg.PodCIDR, "pod-cidr", "", "the node's pod CIDR, e.g. 10.244.1.0/24")
	fs.StringVar(&cfg.NodeNetns, "node-netns", "", "the node's network namespace (must exist)")
	fs.StringVar(&cfg.EchoBinary, "echo-binary", "", "labecho binary, run for containers without a command")
	fs.StringVar(&cfg.StateDir, "state-dir", "/run/lab", "state directory (pod logs, unready files, netns records)")
	fs.BoolVar(&cfg.TeardownOnExit, "teardown-on-exit", false, "tear every pod down on SIGTERM")
	fs.DurationVar(&cfg.KillWait, "kill-wait", 2*time.Second, "time between SIGTERM and SIGKILL of a pod process")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments %q\n", fs.Args())
		return 2
	}
	if cfg.EchoBinary != "" {
		// The process runs with / as its directory.
		if abs, err := filepath.Abs(cfg.EchoBinary); err == nil {
			cfg.EchoBinary = abs
		}
	}
	cfg.Logger = logger
	c, err := client(*kubeconfig)
	if err != nil {
		logger.Printf("labkubelet: %v", err)
		return 2
	}
	k, err := kubelet.New(c, cfg)
	if err != nil {
		logger.Printf("labkubelet: %v", err)
		return 2
	}
	if err := k.Run(ctx); err != nil && ctx.Err() == nil {
		logger.Printf("labkubelet: %v", err)
		return 1
	}
	return 0
}

func scheduleMain(ctx context.Context, args []string, stderr io.Writer, logger *log.Logger) int {
	fs := flag.NewFlagSet("labkubelet schedule", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the API server")
	nodes := fs.String("nodes", "", "comma-separated node names, in round-robin order")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var names []string
	for _, n := range strings.Split(*nodes, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	c, err := client(*kubeconfig)
	if err != nil {
		logger.Printf("labkubelet: %v", err)
		return 2
	}
	s, err := kubelet.NewScheduler(c, names, logger)
	if err != nil {
		logger.Printf("labkubelet: %v", err)
		return 2
	}
	if err := s.Run(ctx); err != nil && ctx.Err() == nil {
		logger.Printf("labkubelet: %v", err)
		return 1
	}
	return 0
}
