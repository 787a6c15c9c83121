package app

import (
	"os"
	"runtime/debug"
)

// defaultGCPercent is the garbage collector's target unless GOGC is set.
// Go's default, 100, lets the heap grow to twice what is live before it
// collects, and the runtime keeps what it once held: at 10,000 Services
// (about 70 MB live) the proxy's peak RSS was 183-189 MB. At 50 the heap
// grows by half at most: 162-164 MB in make bench, for more CPU in
// collections (docs/benchmarks.md, "Memory"). GOGC=100 gives Go's default
// back.
const defaultGCPercent = 50

// setGCPercent applies defaultGCPercent unless the operator set GOGC.
func setGCPercent() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
}
