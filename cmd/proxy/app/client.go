package app

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// RESTConfig returns the API server client config: the in-cluster config
// unless --kubeconfig or --master is given, as kube-proxy. Requests use
// --kube-api-content-type (protobuf by default, which is far cheaper to
// decode for EndpointSlice watches) and --kube-api-qps/--kube-api-burst.
// The user agent is client-go's default, which names the binary.
func (o *Options) RESTConfig() (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if o.Kubeconfig == "" && o.Master == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster client config (outside a pod, set --kubeconfig or --master): %w", err)
		}
	} else {
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.Kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdapi.Cluster{Server: o.Master}},
		).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("client config from --kubeconfig=%q --master=%q: %w", o.Kubeconfig, o.Master, err)
		}
	}

	cfg.ContentType = o.KubeAPIContentType
	if cfg.ContentType == "" {
		cfg.ContentType = ContentTypeProtobuf
	}
	if cfg.ContentType == ContentTypeProtobuf {
		// Built-in types come back as protobuf; JSON stays acceptable for
		// anything the server cannot encode as protobuf.
		cfg.AcceptContentTypes = ContentTypeProtobuf + "," + ContentTypeJSON
	} else {
		cfg.AcceptContentTypes = cfg.ContentType
	}
	cfg.QPS = o.KubeAPIQPS
	cfg.Burst = int(o.KubeAPIBurst)
	return cfg, nil
}
