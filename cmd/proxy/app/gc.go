package app

import (
	"os"
	"runtime/debug"
	"sync"

	"k8s.io/klog/v2"
)

// startupGCPercent is the garbage collector's target while the proxy
// starts: the informers' initial lists and the first full sync allocate
// every object at once (and the netlink library a receive buffer per
// kernel operation), which is when the process reaches its peak memory.
// Collecting more often then keeps that peak down for a few CPU seconds.
const startupGCPercent = 25

// lowerGCUntilSynced sets startupGCPercent and returns the function that
// puts the previous target back (safe to call more than once). A GOGC set
// by the operator is left alone.
func lowerGCUntilSynced() (restore func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	old := debug.SetGCPercent(startupGCPercent)
	var once sync.Once
	return func() {
		once.Do(func() {
			debug.SetGCPercent(old)
			klog.V(2).InfoS("First sync done; garbage collector target restored", "gcPercent", old)
		})
	}
}
