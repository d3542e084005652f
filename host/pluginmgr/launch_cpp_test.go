package pluginmgr_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/internal/testbin"
)

// BenchmarkLaunchCpp measures launch → handshake → first Describe reply of
// the minimal C++ plugin (bin/testplugins/minimal-cpp, built by make build),
// and of the C++ reference plugin.
func BenchmarkLaunchCpp(b *testing.B) {
	for _, p := range []string{"testplugins/minimal-cpp", "plugins/ref-cpp"} {
		b.Run(filepath.Base(p), func(b *testing.B) { benchLaunchCpp(b, filepath.Join(testbin.ModuleRoot(), "bin", p)) })
	}
}

func benchLaunchCpp(b *testing.B, path string) {
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
			b.Fatalf("C++ plugin missing (run make build-cpp): %v", err)
		}
		b.Skipf("C++ plugin missing (run make build-cpp): %v", err)
	}
	m, err := pluginmgr.New(pluginmgr.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	var launchNs int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p, err := m.Launch(context.Background(), path)
		if err != nil {
			b.Fatal(err)
		}
		launchNs += p.LaunchNs
		if p.SDK != "cpp" {
			b.Fatalf("sdk %q", p.SDK)
		}
		b.StopTimer()
		p.Stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(launchNs)/float64(b.N)/1e6, "ms-to-describe")
}
