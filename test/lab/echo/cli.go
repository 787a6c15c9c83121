package echo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const usage = `usage:
  labecho serve [--tcp 8080,...] [--udp 8080,...] [--sctp 8080,...] [--drain-timeout 5s]
  labecho client --proto tcp|udp|sctp --addr HOST:PORT [--count 1] [--timeout 2s]
                 [--source-port P] [--interval 0] [--path /]
`

// Main runs the labecho command line and returns the exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		return serveMain(ctx, args[1:], stdout, stderr)
	case "client":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		return clientMain(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "unknown command %q\n%s", args[0], usage)
	return 2
}

// ParsePorts reads a comma-separated port list; "" means none.
func ParsePorts(s string) ([]int, error) {
	var ports []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 0 || p > 65535 {
			return nil, fmt.Errorf("bad port %q", f)
		}
		ports = append(ports, p)
	}
	return ports, nil
}

func serveMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("labecho serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tcp := fs.String("tcp", "8080", "comma-separated TCP (HTTP) ports; empty disables")
	udp := fs.String("udp", "8080", "comma-separated UDP ports; empty disables")
	sctp := fs.String("sctp", "8080", "comma-separated SCTP ports; empty disables")
	drain := fs.Duration("drain-timeout", 5*time.Second, "on SIGTERM, how long in-flight HTTP requests may go on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg := Config{Name: PodName(), Log: stdout}
	var err error
	for _, p := range []struct {
		flag  string
		value string
		dst   *[]int
	}{{"tcp", *tcp, &cfg.TCPPorts}, {"udp", *udp, &cfg.UDPPorts}, {"sctp", *sctp, &cfg.SCTPPorts}} {
		if *p.dst, err = ParsePorts(p.value); err != nil {
			fmt.Fprintf(stderr, "--%s: %v\n", p.flag, err)
			return 2
		}
	}
	srv, err := Start(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "labecho: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "labecho %s serving tcp %v udp %v sctp %v\n",
		cfg.Name, srv.Addrs("tcp"), srv.Addrs("udp"), srv.Addrs("sctp"))
	<-ctx.Done()
	fmt.Fprintf(stdout, "labecho %s: signal received, shutting down\n", cfg.Name)
	sctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		fmt.Fprintf(stderr, "labecho: shutdown: %v\n", err)
	}
	return 0
}

// PodName is $POD_NAME, else the host name.
func PodName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "unknown"
}

func clientMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("labecho client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg ClientConfig
	fs.StringVar(&cfg.Proto, "proto", "tcp", "tcp (HTTP GET), udp or sctp")
	fs.StringVar(&cfg.Addr, "addr", "", "HOST:PORT to send to")
	fs.IntVar(&cfg.Count, "count", 1, "number of requests")
	fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Second, "per-request timeout")
	fs.IntVar(&cfg.SourcePort, "source-port", 0, "fixed local port for UDP requests (0: a fresh socket and port each)")
	fs.DurationVar(&cfg.Interval, "interval", 0, "pause between requests")
	fs.StringVar(&cfg.Path, "path", "/", "HTTP path for tcp")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments %q\n", fs.Args())
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "labecho client: %v\n", err)
		return 2
	}
	failures := RunClient(ctx, cfg, func(r Result) { fmt.Fprintln(stdout, r.String()) })
	if failures > 0 {
		return 1
	}
	return 0
}
