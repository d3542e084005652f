package pluginmgr_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/pipehost/pipehost/host/pluginmgr"
	"github.com/pipehost/pipehost/internal/testbin"
)

// BenchmarkLaunchRust measures launch → handshake → first Describe reply of
// the Rust reference plugin (bin/plugins/ref-rust, built by make build).
func BenchmarkLaunchRust(b *testing.B) {
	path := filepath.Join(testbin.ModuleRoot(), "bin", "plugins", "ref-rust")
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("PIPEHOST_REQUIRE_NATIVE") == "1" {
			b.Fatalf("Rust plugin missing (run make build-rust): %v", err)
		}
		b.Skipf("Rust plugin missing (run make build-rust): %v", err)
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
		if p.SDK != "rust" {
			b.Fatalf("sdk %q", p.SDK)
		}
		b.StopTimer()
		p.Stop()
		b.StartTimer()
	}
	b.ReportMetric(float64(launchNs)/float64(b.N)/1e6, "ms-to-describe")
}
