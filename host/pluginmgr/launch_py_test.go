package pluginmgr_test

import (
	"os"
	"testing"
)

// BenchmarkLaunchPython measures launch → first Describe reply for the
// Python reference plugin (bin/plugins/ref-py, a launcher written by make
// build): interpreter start, numpy, gRPC and the generated protocol code.
// With PIPEHOST_BENCH_PY_BASELINE naming another launcher of the same
// plugin (scripts/bench-python.sh writes one for the SDK before its
// start-up work), that one is measured too, alternating with ref-py.
func BenchmarkLaunchPython(b *testing.B) {
	b.Run("ref-py", func(b *testing.B) { benchLaunch(b, nativeBinary(b, "py", "plugins/ref-py"), "python") })
	if base := os.Getenv("PIPEHOST_BENCH_PY_BASELINE"); base != "" {
		b.Run("baseline", func(b *testing.B) { benchLaunch(b, base, "python") })
	}
}
