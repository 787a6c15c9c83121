// Command labbench is the benchmark's probe inside the lab VM (see
// test/bench/probe): run in the network namespace of the proxy under test,
// it reads a JSON spec on stdin and reports what the kernel and the proxy's
// process show as JSON lines on stdout.
//
//	labbench wait|idle|changes|churn|stat|quiet|time < spec.json
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/bench/probe"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: labbench %s < spec.json\n", strings.Join(probe.Commands, "|"))
		os.Exit(2)
	}
	if err := probe.Run(os.Args[1], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "labbench:", err)
		os.Exit(1)
	}
}
