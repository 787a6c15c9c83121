package nldump

import (
	"errors"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// An answer given up on (here a truncated datagram) is read out before the
// next request, which the kernel would otherwise refuse (EBUSY) while the
// old dump runs.
func TestExecuteAfterAnAbandonedDump(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread stays locked: it ends with the goroutine, its
		// namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			t.Errorf("lo: %v", err)
			return
		}
		// Enough addresses for a dump of many datagrams.
		const n = 3000
		for i := range n {
			ip := net.IPv4(10, 1, byte(i>>8), byte(i))
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}}); err != nil {
				t.Errorf("ip addr add %v dev lo: %v", ip, err)
				return
			}
		}
		c, err := Open(unix.NETLINK_ROUTE, &Buffer{b: make([]byte, 256)}, 5*time.Second)
		if err != nil {
			t.Errorf("open: %v", err)
			return
		}
		defer c.Close()
		dump := func() (int, error) {
			req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
			req.AddData(nl.NewIfAddrmsg(unix.AF_INET))
			count := 0
			err := c.Execute(req, unix.RTM_NEWADDR, func([]byte) error { count++; return nil })
			return count, err
		}
		if _, err := dump(); !errors.Is(err, ErrTruncated) {
			t.Errorf("first dump with a 256-byte buffer: %v, want ErrTruncated", err)
			return
		}
		for i := range 2 {
			got, err := dump()
			if err != nil || got < n {
				t.Errorf("dump %d after the truncated one: %d addresses, %v; want %d or more", i+2, got, err, n)
			}
		}
	}()
	<-done
}
