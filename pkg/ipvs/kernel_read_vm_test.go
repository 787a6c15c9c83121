//go:build linux && ipvskernel

package ipvs

// Real-kernel tests of the IPVS reads. They need root and a kernel with
// IPVS, which CI hosts lack: test/e2e's TestIPVSKernelReads builds them
// (`go test -c -tags ipvskernel ./pkg/ipvs`) and runs them in the lab VM.
// Each case programs the kernel with `ipvsadm -R` in a fresh network
// namespace and compares what Services returns, over the socket options
// and over netlink plus /proc/net/ip_vs, with the expected listing.

import (
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// enterNewNetns moves the test's OS thread into a new network namespace
// for the rest of the test (the thread is dropped with it at the end).
func enterNewNetns(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	// The kernel refuses real servers while no address is unicast.
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
}

func ipvsadmRestore(t *testing.T, rules string) {
	t.Helper()
	cmd := exec.Command("ipvsadm", "-R")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ipvsadm -R: %v: %s", err, out)
	}
}

func dumpOf(vss []*VirtualServer) string {
	st := &State{VirtualServers: map[VSKey]*VirtualServer{}}
	for _, vs := range vss {
		st.VirtualServers[vs.Key] = vs
	}
	return st.DumpIPVS()
}

// mixedTable is every kind of service and destination the reads must
// return as they are, and a firewall-mark service they leave out.
const mixedTable = `-A -t 10.96.0.1:443 -s rr
-a -t 10.96.0.1:443 -r 192.168.1.10:6443 -m -w 1
-A -u 10.96.0.10:53 -s sh -b sh-fallback,sh-port -p 10800
-a -u 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1
-a -u 10.96.0.10:53 -r 10.244.2.5:5353 -m -w 0
-A --sctp-service 10.96.0.11:3868 -s wlc
-a --sctp-service 10.96.0.11:3868 -r 10.244.1.9:3868 -i -w 3
-a --sctp-service 10.96.0.11:3868 -r 10.244.1.8:3868 -g -w 2
-A -u 10.96.0.12:80 -s rr -o
-A -f 7 -s rr
-a -f 7 -r 10.3.3.3:0 -g -w 1
`

const mixedWant = `-A -t 10.96.0.1:443 -s rr
-a -t 10.96.0.1:443 -r 192.168.1.10:6443 -m -w 1
-A -u 10.96.0.10:53 -s sh -p 10800 -b sh-fallback,sh-port
-a -u 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1
-a -u 10.96.0.10:53 -r 10.244.2.5:5353 -m -w 0
-A --sctp-service 10.96.0.11:3868 -s wlc
-a --sctp-service 10.96.0.11:3868 -r 10.244.1.8:3868 -g -w 2
-a --sctp-service 10.96.0.11:3868 -r 10.244.1.9:3868 -i -w 3
-A -u 10.96.0.12:80 -s rr -o
`

const ipv6Table = `-A -t [fd00::10]:80 -s rr
-a -t [fd00::10]:80 -r [fd00:10:244::5]:8080 -m -w 1
-a -t [fd00::10]:80 -r [fd00:10:244::6]:8080 -m -w 0
-A -u [fd00::a]:53 -s mh -b mh-port -p 600
`

const ipv6Want = `-A -u [fd00::a]:53 -s mh -p 600 -b mh-port
-A -t [fd00::10]:80 -s rr
-a -t [fd00::10]:80 -r [fd00:10:244::5]:8080 -m -w 1
-a -t [fd00::10]:80 -r [fd00:10:244::6]:8080 -m -w 0
`

// many returns n services of each family with two destinations each.
func many(n int) string {
	var r strings.Builder
	for i := range n {
		v4 := fmt.Sprintf("10.97.%d.%d:80", i/250, i%250+1)
		v6 := fmt.Sprintf("[fd00::1:%x]:80", i)
		for _, vs := range []string{v4, v6} {
			fmt.Fprintf(&r, "-A -t %s -s rr\n", vs)
			rs := []string{fmt.Sprintf("10.245.%d.%d:8080", i/250, i%250+1), fmt.Sprintf("10.245.%d.%d:8081", i/250, i%250+1)}
			if vs == v6 {
				rs = []string{fmt.Sprintf("[fd00:10:245::%x]:8080", i), fmt.Sprintf("[fd00:10:245::%x]:8081", i)}
			}
			for _, d := range rs {
				fmt.Fprintf(&r, "-a -t %s -r %s -m -w 1\n", vs, d)
			}
		}
	}
	return r.String()
}

func TestKernelReads(t *testing.T) {
	manyRules := many(manyIPv6 + 10)
	for _, tc := range []struct {
		name  string
		rules string
		want  string // "": the same as the netlink and /proc read
		fast  bool   // the socket options are in use
	}{
		{"empty", "", "", true},
		{"IPv4: every kind", mixedTable, mixedWant, true},
		{"IPv4 and a few IPv6: destinations dumped per IPv6 service", mixedTable + ipv6Table, mixedWant + ipv6Want, true},
		{"many IPv6: destinations from /proc/net/ip_vs", manyRules, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			enterNewNetns(t)
			ipvsadmRestore(t, tc.rules)
			k, err := NewKernelIPVS()
			if err != nil {
				t.Fatal(err)
			}
			defer k.Close()
			if (k.so != nil) != tc.fast {
				t.Fatalf("socket options in use: %v, want %v", k.so != nil, tc.fast)
			}
			fast, err := k.Services()
			if err != nil {
				t.Fatalf("Services: %v", err)
			}
			if k.so == nil {
				t.Fatal("the socket-option read failed and was dropped")
			}
			k.mu.Lock()
			slow, err := k.servicesNetlink()
			k.mu.Unlock()
			if err != nil {
				t.Fatalf("servicesNetlink: %v", err)
			}
			got, want := dumpOf(fast), dumpOf(slow)
			if got != want {
				t.Fatalf("socket options and netlink differ:\n--- socket options\n%s--- netlink\n%s", got, want)
			}
			if tc.want != "" && got != tc.want {
				t.Fatalf("read:\n%s\nwant:\n%s", got, tc.want)
			}
			if tc.want == "" && len(fast) != strings.Count(tc.rules, "-A -t")-strings.Count(tc.rules, "-A -f") {
				t.Fatalf("read %d services from:\n%s", len(fast), tc.rules)
			}
			// The digest read hashes what Services lists, record by record.
			sum, err := k.Digest()
			if err != nil {
				t.Fatalf("Digest: %v", err)
			}
			if sum != digestServices(fast) || sum != digestServices(slow) {
				t.Fatalf("Digest %x, digest of the listing %x, of the netlink listing %x", sum, digestServices(fast), digestServices(slow))
			}
			// A weight changed by someone else changes it.
			if len(fast) > 0 && len(fast[0].RealServers) > 0 {
				vs, rs := fast[0], fast[0].RealServers[0]
				rs.Weight++
				if err := k.UpdateDestination(vs.Key, rs); err != nil {
					t.Fatal(err)
				}
				if after, err := k.Digest(); err != nil || after == sum {
					t.Fatalf("Digest after a weight change: %x, %v; before %x", after, err, sum)
				}
			}
		})
	}
}

// A process that never had an IPv6 service and found none stops dumping
// for them; one it adds makes it look again.
func TestKernelReadsSkipIPv6UntilOneIsAdded(t *testing.T) {
	enterNewNetns(t)
	ipvsadmRestore(t, mixedTable)
	k, err := NewKernelIPVS()
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	read := func() string {
		t.Helper()
		vss, err := k.Services()
		if err != nil {
			t.Fatal(err)
		}
		return dumpOf(vss)
	}
	if got := read(); got != mixedWant || !k.noIPv6 {
		t.Fatalf("first read (noIPv6 %v):\n%s", k.noIPv6, got)
	}
	ipvsadmRestore(t, "-A -t [fd00::99]:80 -s rr\n") // another tool's
	if got := read(); got != mixedWant {
		t.Fatalf("after another tool's IPv6 service:\n%s", got)
	}
	ours := &VirtualServer{Key: VSKey{Addr: ip("fd00::10"), Port: 80, Proto: ProtoTCP}, Scheduler: "rr"}
	if err := k.AddService(ours); err != nil {
		t.Fatal(err)
	}
	want := mixedWant + "-A -t [fd00::10]:80 -s rr\n-A -t [fd00::99]:80 -s rr\n"
	if got := read(); got != want {
		t.Fatalf("after adding an IPv6 service:\n%s\nwant:\n%s", got, want)
	}
}
