package healthcheck

import (
	"context"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// ProbeAPIServer asks the API server for /readyz every period (each try
// bounded by period) and tells hs when it answers, until ctx ends. /readyz
// fails when the API server cannot reach etcd, which stops lists and
// watches as surely as an API server that is down. Every authenticated
// client may read it (the system:public-info-viewer role).
func ProbeAPIServer(ctx context.Context, client rest.Interface, period time.Duration, hs *ProxyHealthServer) {
	logger := klog.FromContext(ctx)
	t := time.NewTicker(period)
	defer t.Stop()
	failing := false
	for {
		tctx, cancel := context.WithTimeout(ctx, period)
		// curl -k https://API/readyz
		_, err := client.Get().AbsPath("/readyz").DoRaw(tctx)
		cancel()
		switch {
		case err == nil:
			hs.APIServerReached()
			if failing {
				logger.Info("The API server answers again")
			}
			failing = false
		case ctx.Err() != nil:
			return
		case !failing:
			logger.Info("The API server does not answer; /healthz fails if this lasts", "err", err.Error())
			failing = true
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
