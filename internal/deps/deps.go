// Package deps keeps the project's chosen dependencies in go.mod while the
// packages that use them are being written.
package deps

import (
	_ "github.com/coreos/go-iptables/iptables"
	_ "github.com/moby/ipvs"
	_ "github.com/vishvananda/netlink"
	_ "github.com/vishvananda/netns"
	_ "golang.org/x/sys/unix"
	_ "k8s.io/api/core/v1"
	_ "k8s.io/api/discovery/v1"
	_ "k8s.io/apimachinery/pkg/apis/meta/v1"
	_ "k8s.io/client-go/informers"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/client-go/kubernetes/fake"
	_ "k8s.io/client-go/tools/clientcmd"
	_ "k8s.io/client-go/tools/record"
	_ "k8s.io/component-base/cli/flag"
	_ "k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/metrics"
	_ "k8s.io/component-base/metrics/legacyregistry"
	_ "k8s.io/component-base/featuregate"
	_ "k8s.io/klog/v2"
	_ "github.com/spf13/cobra"
	_ "github.com/spf13/pflag"
)
