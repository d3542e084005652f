package pluginmgr_test

import "testing"

// BenchmarkLaunchPython measures launch → first Describe reply for the
// Python reference plugin (bin/plugins/ref-py, a launcher written by make
// build): interpreter start, numpy, gRPC and the generated protocol code.
func BenchmarkLaunchPython(b *testing.B) {
	benchLaunch(b, nativeBinary(b, "py", "plugins/ref-py"), "python")
}
