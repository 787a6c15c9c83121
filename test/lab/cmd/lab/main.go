// Command lab drives the project's lab: a real kernel with IPVS in a VM, a
// real API server, node and pod network namespaces, and the proxy under test.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

const usage = `usage: lab COMMAND
  up                       bring the lab up (idempotent); PROXY=upstream|ours, PROXY_ARGS, LAB_NODES
  down                     stop everything and remove the lab's state
  status                   what runs where
  demo                     bring the lab up if needed, deploy the sample app, show IPVS tables and answers
  kubectl ARGS...          kubectl against the lab's API server
  exec TARGET -- CMD...    run CMD in TARGET: vm, nodeN or pod/NAMESPACE/NAME
  proxy NODE ACTION        restart|stop|start|kill|logs the proxy on NODE
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	code, err := run(ctx, os.Args[1], os.Args[2:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func run(ctx context.Context, cmd string, args []string) (int, error) {
	switch cmd {
	case "up":
		c, err := labctl.DefaultConfig()
		if err != nil {
			return 1, err
		}
		if len(args) > 0 && args[0] == "--" {
			c.ProxyArgs = append(c.ProxyArgs, args[1:]...)
		}
		unlock, err := c.Lock(ctx, os.Stdout)
		if err != nil {
			return 1, err
		}
		defer unlock()
		return 0, labctl.Up(ctx, c, os.Stdout)
	case "down":
		c, err := labctl.Load()
		if err != nil {
			fmt.Println("no lab is up")
			return 0, nil
		}
		unlock, err := c.Lock(ctx, os.Stdout)
		if err != nil {
			return 1, err
		}
		defer unlock()
		return 0, labctl.Down(ctx, c, os.Stdout)
	case "demo":
		// Up (if needed) and the demo under one lock, so that no other lab
		// run takes the lab down in between.
		c, err := labctl.DefaultConfig()
		if err != nil {
			return 1, err
		}
		unlock, err := c.Lock(ctx, os.Stdout)
		if err != nil {
			return 1, err
		}
		defer unlock()
		if err := labctl.Up(ctx, c, os.Stdout); err != nil {
			return 1, err
		}
		cur, err := labctl.Load()
		if err != nil {
			return 1, err
		}
		return 0, labctl.Demo(ctx, cur, os.Stdout)
	case "pipe":
		if len(args) != 1 {
			return 2, fmt.Errorf("usage: lab pipe HOST:PORT")
		}
		return 0, pipe(args[0])
	}
	c, err := labctl.Load()
	if err != nil {
		return 1, err
	}
	switch cmd {
	case "status":
		return 0, c.Status(ctx, os.Stdout)
	case "kubectl":
		k := exec.CommandContext(ctx, c.KubectlPath(), append([]string{"--kubeconfig=" + c.Kubeconfig()}, args...)...)
		k.Stdin, k.Stdout, k.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := k.Run(); err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				return ee.ExitCode(), nil
			}
			return 1, err
		}
		return 0, nil
	case "exec":
		if len(args) < 3 || args[1] != "--" {
			return 2, fmt.Errorf("usage: lab exec TARGET -- CMD...")
		}
		code, err := c.Exec(ctx, args[0], args[2:], os.Stdout, os.Stderr)
		return code, err
	case "proxy":
		if len(args) != 2 {
			return 2, fmt.Errorf("usage: lab proxy NODE restart|stop|start|kill|logs")
		}
		return 0, c.ProxyCommand(ctx, args[0], args[1], os.Stdout)
	}
	fmt.Fprint(os.Stderr, usage)
	return 2, fmt.Errorf("unknown command %q", cmd)
}

// pipe connects stdin/stdout to a TCP address: qemu runs one per guest
// connection to the API server.
func pipe(addr string) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(os.Stdout, conn)
		os.Stdout.Close()
	}()
	io.Copy(conn, os.Stdin)
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	wg.Wait()
	return nil
}
