// Package echo is the lab's pod program: a small server that answers every
// request with its pod name and the client address it saw, and a bounded
// client that end-to-end tests run inside node and pod network namespaces.
//
// Every answer is one line:
//
//	<pod-name> <client-ip>:<client-port>
//
// with IPv6 client addresses in brackets ([2001:db8::1]:40000) and IPv4
// clients of dual-stack sockets shown as plain IPv4. Tests read the pod name
// to check load spreading and affinity, and the client address to check
// whether the proxy preserved the source IP.
//
// TCP is served as HTTP so that curl works: any path answers the line,
// /healthz answers "ok" and /hold?seconds=N streams one line per second for
// N seconds (a long-lived connection). UDP answers each datagram, from the
// address the datagram was sent to. SCTP (one-to-one style, through
// golang.org/x/sys/unix since the standard library has none) writes the line
// and closes.
package echo
