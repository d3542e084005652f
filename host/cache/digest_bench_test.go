package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/pipehost/pipehost/internal/atomicfile"
	"github.com/pipehost/pipehost/shm"
)

// sealedSegment returns a filled, sealed segment of size bytes, as the
// engine digests it.
func sealedSegment(b testing.TB, size int64) *shm.Segment {
	b.Helper()
	s, err := shm.Create("digest", size)
	if err != nil {
		b.Fatal(err)
	}
	m, err := s.MapRW()
	if err != nil {
		b.Fatal(err)
	}
	buf := m.Bytes()
	for i := range buf {
		buf[i] = byte(i*7 + i>>12)
	}
	m.Unmap()
	if err := s.SealWrite(); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkDigest measures SHA-256 of sealed 256 MiB segments through
// SegmentDigest, what the engine runs on every output with the cache on:
// one output on one core, and one output per CPU at once (MB/s is then
// all of them together).
func BenchmarkDigest(b *testing.B) {
	const size = 256 << 20
	for _, n := range []int{1, runtime.NumCPU()} {
		b.Run(fmt.Sprintf("outputs-%d", n), func(b *testing.B) {
			segs := make([]*shm.Segment, n)
			for i := range segs {
				segs[i] = sealedSegment(b, size)
				defer segs[i].Close()
			}
			b.SetBytes(int64(n) * size)
			b.ResetTimer()
			for b.Loop() {
				var wg sync.WaitGroup
				errs := make([]error, n)
				for i, s := range segs {
					wg.Go(func() { _, errs[i] = SegmentDigest(s) })
				}
				wg.Wait()
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkFileCreate measures the floor a cache entry stands on: creating,
// writing and renaming one small file into a sharded directory, as a
// manifest is written (atomicfile.Write). On a journaling file system this,
// not hashing, is what a miss of a tiny output costs.
func BenchmarkFileCreate(b *testing.B) {
	dir := b.TempDir()
	for i := 0; i < 256; i++ {
		os.MkdirAll(filepath.Join(dir, fmt.Sprintf("%02x", i)), 0o755)
	}
	body := make([]byte, 1500)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := atomicfile.Write(filepath.Join(dir, fmt.Sprintf("%02x", i%256), fmt.Sprintf("%d.json", i)), body); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/file")
}
