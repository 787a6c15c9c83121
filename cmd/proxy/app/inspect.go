package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	cliflag "k8s.io/component-base/cli/flag"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/inspect"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
)

// InspectCommandName is the subcommand that prints the node's IPVS table.
const InspectCommandName = "inspect"

// DefaultInspectTimeout bounds the API server lists of inspect.
const DefaultInspectTimeout = 30 * time.Second

// inspectOptions are the flags of the inspect subcommand.
type inspectOptions struct {
	Kubeconfig string
	Master     string
	JSON       bool
	KernelOnly bool
	Namespace  string
	Service    string
	Timeout    time.Duration
}

// inspectDeps are what inspect talks to; tests replace them with fakes.
type inspectDeps struct {
	// openKernel opens this node's IPVS table; closeFn releases it.
	openKernel func() (k inspect.Kernel, closeFn func(), err error)
	// clientset builds the API client from --kubeconfig and --master.
	clientset func(kubeconfig, master string) (kubernetes.Interface, error)
}

// NewInspectCommand returns `kube-ipvs-proxy inspect`, which prints this
// node's IPVS table like `ipvsadm -Ln` with the Service port of each virtual
// server and the Pod of each real server.
func NewInspectCommand() *cobra.Command {
	return newInspectCommand(inspectDeps{openKernel: openKernelIPVS, clientset: inspectClientset})
}

func newInspectCommand(deps inspectDeps) *cobra.Command {
	o := &inspectOptions{Timeout: DefaultInspectTimeout}
	cmd := &cobra.Command{
		Use:   InspectCommandName,
		Short: "Print this node's IPVS table with the Service and Pod behind each entry",
		Long: `inspect prints the node's IPVS table as "ipvsadm -Ln" does, with the
ActiveConn and InActConn counts, and next to each virtual server the
namespace/Service:port it serves (ClusterIP, ExternalIP, LoadBalancer or
NodePort) or "(not a Service)", next to each real server the endpoint's Pod
(namespace/name, from its targetRef), "(no targetRef)" or "(not an
endpoint)", and [draining] for a real server at weight 0.

It reads Services and EndpointSlices with one list each from the API server
(--kubeconfig or --master, else the in-cluster config), then the kernel's
table over netlink, which needs root (CAP_NET_ADMIN) in the node's network
namespace. --kernel-only prints the table without the API server. --json
prints the documented JSON form (see the README).`,
		Example: `  kube-ipvs-proxy inspect
  kube-ipvs-proxy inspect --namespace kube-system --json
  kube-ipvs-proxy inspect --service default/web
  kubectl -n kube-system exec ds/kube-ipvs-proxy -- kube-ipvs-proxy inspect`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			return runInspect(ctx, cmd.OutOrStdout(), o, deps)
		},
	}
	// Usage for bad flags only, as for the proxy command (whose SilenceUsage
	// would otherwise hide it).
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		c.SilenceUsage = false
		c.Root().SilenceUsage = false
		return err
	})
	fs := cmd.Flags()
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "",
		"Path to kubeconfig file with authorization information (the master location can be overridden by the master flag). If neither this nor --master is set, the in-cluster config is used.")
	fs.StringVar(&o.Master, "master", "",
		"The address of the Kubernetes API server (overrides any value in kubeconfig)")
	fs.BoolVar(&o.JSON, "json", false, "Print the JSON form instead of the table.")
	fs.BoolVar(&o.KernelOnly, "kernel-only", false,
		"Print the IPVS table with connection counts only, without asking the API server which Service and Pod each entry is.")
	fs.StringVarP(&o.Namespace, "namespace", "n", "", "Only the virtual servers of Services in this namespace.")
	fs.StringVar(&o.Service, "service", "",
		"Only the virtual servers of this Service: NAME (in every namespace unless --namespace is set) or NAMESPACE/NAME.")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "How long the API server lists may take.")
	return cmd
}

// runInspect lists the API objects, reads the kernel and prints the report.
func runInspect(ctx context.Context, out io.Writer, o *inspectOptions, deps inspectDeps) error {
	filter, err := inspect.ParseFilter(o.Namespace, o.Service)
	if err != nil {
		return fmt.Errorf("--service: %w", err)
	}
	if o.KernelOnly && !filter.IsZero() {
		return errors.New("--namespace and --service need the API server: drop --kernel-only")
	}
	for _, v := range []string{filter.Namespace, filter.Name} {
		if v != "" && len(validation.IsValidLabelValue(v)) > 0 {
			return fmt.Errorf("%q is not a valid namespace or Service name", v)
		}
	}

	// Opened first: without root this fails before any API request.
	k, closeKernel, err := deps.openKernel()
	if err != nil {
		return kernelError(err)
	}
	defer closeKernel()

	in := inspect.Input{KernelOnly: o.KernelOnly, Filter: filter}
	if !o.KernelOnly {
		cs, err := deps.clientset(o.Kubeconfig, o.Master)
		if err != nil {
			return err
		}
		if o.Timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, o.Timeout)
			defer cancel()
		}
		// Every Service, even with a filter: an address that is any
		// Service's VIP is never taken for a node address.
		svcs, err := cs.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("list Services: %w", err)
		}
		// Only the filtered Services' EndpointSlices.
		sliceOpts := metav1.ListOptions{}
		if filter.Name != "" {
			sliceOpts.LabelSelector = discovery.LabelServiceName + "=" + filter.Name
		}
		eps, err := cs.DiscoveryV1().EndpointSlices(filter.Namespace).List(ctx, sliceOpts)
		if err != nil {
			return fmt.Errorf("list EndpointSlices: %w", err)
		}
		in.Services, in.EndpointSlices = svcs.Items, eps.Items
	}

	// The kernel is read last: the proxy follows the API server, so this
	// gives it the most time to have programmed what was listed.
	in.VirtualServers, err = inspect.ReadKernel(k)
	if err != nil {
		return kernelError(err)
	}
	r := inspect.Build(in)
	if o.JSON {
		return inspect.WriteJSON(out, r)
	}
	return inspect.WriteText(out, r)
}

// kernelError adds what to do about a refused netlink request.
func kernelError(err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%w (reading IPVS needs root, CAP_NET_ADMIN)", err)
	}
	return err
}

// openKernelIPVS opens the IPVS netlink socket of the current network
// namespace. Like the proxy (and ipvsadm) it loads the ip_vs module when
// missing.
func openKernelIPVS() (inspect.Kernel, func(), error) {
	k, err := ipvs.NewKernelIPVS()
	if err != nil {
		return nil, nil, err
	}
	return k, k.Close, nil
}

// inspectClientset is the proxy's client (Options.RESTConfig: protobuf,
// in-cluster unless --kubeconfig or --master) for the inspect flags.
func inspectClientset(kubeconfig, master string) (kubernetes.Interface, error) {
	o := NewOptions()
	o.Kubeconfig, o.Master = kubeconfig, master
	cfg, err := o.RESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return cs, nil
}
