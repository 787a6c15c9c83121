// Command labecho is the lab's pod program: "labecho serve" answers TCP
// (HTTP), UDP and SCTP requests with its pod name and the client address it
// saw; "labecho client" sends a bounded number of requests and prints one
// line per request. See package echo.
package main

import (
	"os"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/echo"
)

func main() {
	os.Exit(echo.Main(os.Args[1:], os.Stdout, os.Stderr))
}
