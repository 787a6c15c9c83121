// Command kube-ipvs-proxy is a drop-in replacement for kube-proxy in IPVS
// mode.
package main

import (
	"os"

	"k8s.io/component-base/cli"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/cmd/proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand(app.Run)))
}
