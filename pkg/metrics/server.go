package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"
)

// ProxyMode is what /proxyMode reports. Some CNI plugins and tools read it
// from kube-proxy's metrics port to learn the dataplane mode.
const ProxyMode = "ipvs"

// HandlerOptions configure NewHandler.
type HandlerOptions struct {
	// EnableProfiling serves net/http/pprof under /debug/pprof/. Off by
	// default because profiles expose internals and cost CPU.
	EnableProfiling bool
}

// NewHandler returns the handler for --metrics-bind-address: /metrics,
// /healthz, /proxyMode and, if enabled, /debug/pprof/.
func NewHandler(o HandlerOptions) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", legacyregistry.Handler())
	// kube-proxy serves a plain "ok" /healthz here too; probes pointed at the
	// metrics port rely on it.
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = fmt.Fprint(w, ProxyMode)
	})
	if o.EnableProfiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Serve serves h on addr until ctx is done, then shuts down gracefully. An
// empty addr disables the server (Serve returns nil at once), matching
// kube-proxy's empty --metrics-bind-address. It returns an error if the
// address cannot be bound or the server fails.
func Serve(ctx context.Context, addr string, h http.Handler) error {
	if addr == "" {
		return nil
	}
	ln, err := Listen(ctx, addr)
	if err != nil {
		return fmt.Errorf("metrics server: %w", err)
	}
	klog.FromContext(ctx).V(2).Info("Starting metrics server", "address", ln.Addr().String())
	return ServeListener(ctx, ln, h)
}

// ServeListener serves h on ln until ctx is done; it closes ln.
func ServeListener(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler: h,
		// Bounds slow clients; pprof's profile and trace need longer writes,
		// so only the header read is limited.
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(ln) }()
	select {
	case err := <-errCh:
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutting down server on %s: %w", ln.Addr(), err)
	}
	if err := <-errCh; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Listen binds a TCP listener on addr ("IP:port"). An IPv4 address binds
// IPv4 only and an IPv6 address IPv6 only, like kube-proxy (which uses
// netutils.MultiListen); Go's plain "tcp" would make 0.0.0.0 dual-stack.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("invalid address %q: %w", addr, err)
	}
	network := "tcp"
	if ip := net.ParseIP(host); ip != nil {
		if ip.To4() != nil {
			network = "tcp4"
		} else {
			network = "tcp6"
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}
