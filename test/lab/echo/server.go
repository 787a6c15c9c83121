package echo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// maxHoldSeconds bounds /hold so that a typo cannot pin a connection for days.
const maxHoldSeconds = 3600

// Config says what a Server listens on.
type Config struct {
	// Name is the pod name put in every answer.
	Name string
	// TCPPorts, UDPPorts and SCTPPorts are the ports to listen on, on all
	// addresses; port 0 picks a free port (see Server.Addrs). An empty list
	// disables the protocol.
	TCPPorts, UDPPorts, SCTPPorts []int
	// Log receives one short line per request; nil discards.
	Log io.Writer
}

// Server serves the echo protocols until Shutdown.
type Server struct {
	cfg    Config
	logger *log.Logger

	httpServers []*http.Server
	tcpAddrs    []netip.AddrPort
	udpConns    []*net.UDPConn
	udpAddrs    []netip.AddrPort
	sctp        []*sctpListener
	sctpAddrs   []netip.AddrPort
	sctpErr     error

	wg sync.WaitGroup
}

// Start binds every configured port and serves in the background. A TCP or
// UDP bind failure is an error; a kernel without SCTP is not (see SCTPErr),
// because the TCP and UDP answers are still useful there.
func Start(cfg Config) (*Server, error) {
	logOut := cfg.Log
	if logOut == nil {
		logOut = io.Discard
	}
	s := &Server{cfg: cfg, logger: log.New(logOut, "", log.LstdFlags|log.Lmicroseconds)}
	if err := s.listen(); err != nil {
		s.closeAll()
		return nil, err
	}
	return s, nil
}

func (s *Server) listen() error {
	for _, port := range s.cfg.TCPPorts {
		// "tcp" with no host is a dual-stack wildcard socket where IPv6 exists.
		ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("tcp port %d: %w", port, err)
		}
		hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
		s.httpServers = append(s.httpServers, hs)
		s.tcpAddrs = append(s.tcpAddrs, ln.Addr().(*net.TCPAddr).AddrPort())
		s.wg.Go(func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.logger.Printf("tcp %s: %v", ln.Addr(), err)
			}
		})
	}
	for _, port := range s.cfg.UDPPorts {
		c, err := listenUDP(port)
		if err != nil {
			return fmt.Errorf("udp port %d: %w", port, err)
		}
		s.udpConns = append(s.udpConns, c)
		s.udpAddrs = append(s.udpAddrs, c.LocalAddr().(*net.UDPAddr).AddrPort())
		s.wg.Go(func() { s.serveUDP(c) })
	}
	for _, port := range s.cfg.SCTPPorts {
		l, err := listenSCTP(port)
		if errors.Is(err, ErrSCTPUnsupported) {
			s.sctpErr = err
			s.logger.Printf("sctp disabled: %v", err)
			break
		}
		if err != nil {
			return fmt.Errorf("sctp port %d: %w", port, err)
		}
		s.sctp = append(s.sctp, l)
		s.sctpAddrs = append(s.sctpAddrs, l.addr)
		s.wg.Go(func() { s.serveSCTP(l) })
	}
	return nil
}

// Addrs returns the bound addresses of one protocol ("tcp", "udp", "sctp")
// in the order of the configured ports, so port 0 callers learn the port.
func (s *Server) Addrs(proto string) []netip.AddrPort {
	switch proto {
	case "tcp":
		return s.tcpAddrs
	case "udp":
		return s.udpAddrs
	case "sctp":
		return s.sctpAddrs
	}
	return nil
}

// SCTPErr is non-nil when SCTP ports were asked for but the kernel has no
// SCTP; it wraps ErrSCTPUnsupported.
func (s *Server) SCTPErr() error { return s.sctpErr }

// Shutdown stops accepting, lets in-flight HTTP requests (such as /hold)
// finish until ctx ends, then closes everything and waits for the serving
// goroutines.
func (s *Server) Shutdown(ctx context.Context) error {
	var firstErr error
	for _, hs := range s.httpServers {
		if err := hs.Shutdown(ctx); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	s.closeAll()
	s.wg.Wait()
	return firstErr
}

func (s *Server) closeAll() {
	for _, hs := range s.httpServers {
		_ = hs.Close()
	}
	for _, c := range s.udpConns {
		_ = c.Close()
	}
	for _, l := range s.sctp {
		_ = l.Close()
	}
}

// line is the answer shared by all protocols.
func (s *Server) line(client netip.AddrPort) string {
	return fmt.Sprintf("%s %s\n", s.cfg.Name, formatAddrPort(client))
}

// formatAddrPort prints IPv4 clients of dual-stack sockets as plain IPv4,
// which is what tests compare with.
func formatAddrPort(ap netip.AddrPort) string {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// ServeHTTP answers the TCP side.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	client, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		http.Error(w, "bad remote address "+r.RemoteAddr, http.StatusInternalServerError)
		return
	}
	s.logger.Printf("tcp %s %s from %s", r.Method, r.URL.RequestURI(), formatAddrPort(client))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch r.URL.Path {
	case "/healthz":
		_, _ = io.WriteString(w, "ok\n")
	case "/hold":
		s.hold(w, r, client)
	default:
		_, _ = io.WriteString(w, s.line(client))
	}
}

// hold streams one line per second for N seconds (lines "1/N" to "N/N",
// the response ends N seconds after it started) so tests get a connection
// that stays open across endpoint changes (graceful termination).
func (s *Server) hold(w http.ResponseWriter, r *http.Request, client netip.AddrPort) {
	n, err := strconv.Atoi(r.URL.Query().Get("seconds"))
	if err != nil || n < 0 || n > maxHoldSeconds {
		http.Error(w, fmt.Sprintf("seconds must be an integer in 0..%d", maxHoldSeconds), http.StatusBadRequest)
		return
	}
	flusher, _ := w.(http.Flusher)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 1; i <= n; i++ {
		if _, err := fmt.Fprintf(w, "%s %s %d/%d\n", s.cfg.Name, formatAddrPort(client), i, n); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
		// Waiting after the last line too keeps the connection open for
		// the full N seconds.
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}
