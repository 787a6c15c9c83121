// Package probe is the measuring side of the benchmark, run inside the lab
// VM by the labbench command (test/lab/cmd/labbench), in the network
// namespace of the proxy under test. It watches the kernel (IPVS over
// netlink and /proc/net/ip_vs, ipsets, the nat table) and the proxy's
// process (/proc/PID/stat and status, its /metrics), and reports what it saw
// as JSON lines on stdout, so that the host can time API writes against
// what the kernel shows.
//
// Every command reads a JSON spec on stdin and writes events, one JSON
// object a line: {"ev":"ready","i":N} and {"ev":"seen","i":N} while it
// watches, then {"ev":"result",...} or {"ev":"error","msg":...} last.
//
// Polling costs CPU that the proxy under test would otherwise have (the VM
// has 2 emulated CPUs), so the table-wide counts are read at modest
// intervals and only single virtual servers are looked up often.
package probe
