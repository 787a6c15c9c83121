// Command labagent runs inside the lab VM and executes commands for the host.
package main

import (
	"flag"
	"log"
	"net/http"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
)

func main() {
	listen := flag.String("listen", "10.0.2.15:7000", "address to serve the agent API on")
	logDir := flag.String("log-dir", "/var/log/lab", "directory for daemon logs")
	flag.Parse()
	srv := agent.NewServer(*logDir)
	log.Printf("labagent listening on %s", *listen)
	log.Fatal(http.ListenAndServe(*listen, srv.Handler()))
}
