package cache

import (
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/pipehost/pipehost/shm"
)

// sealedSegment returns a filled, sealed segment of size bytes, as the
// engine digests it.
func sealedSegment(b *testing.B, size int64) *shm.Segment {
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
