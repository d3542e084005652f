package shm

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// benchEnv sets the segment size of the large benchmarks, e.g. "1GiB",
// "256MiB" or a byte count. The default keeps `go test -bench .` short.
const benchEnv = "PIPEHOST_SHM_BENCH_SIZE"

func benchSize(b *testing.B) int64 {
	v := os.Getenv(benchEnv)
	if v == "" {
		return 64 << 20
	}
	mult := int64(1)
	for suf, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if n, ok := strings.CutSuffix(v, suf); ok {
			v, mult = n, m
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a size like 1GiB", benchEnv, os.Getenv(benchEnv))
	}
	return n * mult
}

// fillPattern writes every byte of dst at memcpy speed.
func fillPattern(dst []byte) {
	if len(dst) == 0 {
		return
	}
	n := min(len(dst), 1<<20)
	for i := range n {
		dst[i] = byte(i*7 + 1)
	}
	for off := n; off < len(dst); off += n {
		copy(dst[off:], dst[:n])
	}
}

// BenchmarkSCMRightsRoundTrip sends one fd to a peer that sends it straight
// back: two messages, two fd transfers.
func BenchmarkSCMRightsRoundTrip(b *testing.B) {
	a, peer := pair(b)
	s, err := Create("rt", 4096)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	go func() {
		for {
			m, fd, err := peer.Recv()
			if err != nil {
				return
			}
			m.Type, m.Token = MsgAdopt, m.Token|PluginTokenBit
			err = peer.Send(m, fd)
			unix.Close(fd)
			if err != nil {
				return
			}
		}
	}()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := a.Send(Message{Type: MsgSegment, Token: uint64(i) + 1, Size: 4096}, s.FD()); err != nil {
			b.Fatal(err)
		}
		_, fd, err := a.Recv()
		if err != nil {
			b.Fatal(err)
		}
		unix.Close(fd)
	}
}

func sealedFilled(b *testing.B, size int64) *Segment {
	b.Helper()
	s, err := Create("bench", size)
	if err != nil {
		b.Fatal(err)
	}
	m, err := s.MapRW()
	if err != nil {
		b.Fatal(err)
	}
	fillPattern(m.Bytes())
	m.Unmap()
	if err := s.SealWrite(); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkMapRO maps a sealed, filled segment read-only (no page touched).
func BenchmarkMapRO(b *testing.B) {
	size := benchSize(b)
	s := sealedFilled(b, size)
	defer s.Close()
	b.ResetTimer()
	for b.Loop() {
		m, err := s.MapRO()
		if err != nil {
			b.Fatal(err)
		}
		m.Unmap()
	}
}

// BenchmarkConsumerRead maps a sealed segment and faults every page in by
// reading one byte per page: what a consumer pays on first access.
func BenchmarkConsumerRead(b *testing.B) {
	size := benchSize(b)
	s := sealedFilled(b, size)
	defer s.Close()
	b.SetBytes(size)
	b.ResetTimer()
	var sink byte
	for b.Loop() {
		m, err := s.MapRO()
		if err != nil {
			b.Fatal(err)
		}
		buf := m.Bytes()
		for i := 0; i < len(buf); i += 4096 {
			sink += buf[i]
		}
		m.Unmap()
	}
	_ = sink
}

// cycle creates a segment, optionally prefaults it, maps it and fills it,
// returning the time spent in Prefault and in map+fill.
func cycle(b *testing.B, size int64, prefault bool) (pre, fill time.Duration) {
	return cycleWith(b, size, prefault, false)
}

// cycleWith is cycle, with the producer's view populated (Mapping.Populate)
// as the Go SDK does for large outputs; that is part of the fill.
func cycleWith(b *testing.B, size int64, prefault, populate bool) (pre, fill time.Duration) {
	s, err := Create("fill", size)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	t0 := time.Now()
	if prefault {
		if err := s.Prefault(); err != nil {
			b.Fatal(err)
		}
	}
	t1 := time.Now()
	m, err := s.MapRW()
	if err != nil {
		b.Fatal(err)
	}
	if populate {
		m.Populate()
	}
	fillPattern(m.Bytes())
	t2 := time.Now()
	m.Unmap()
	return t1.Sub(t0), t2.Sub(t1)
}

// BenchmarkFill compares a producer filling a fresh segment through MapRW
// with filling a fresh Go slice, and the effects of Prefault (the host's,
// ahead of the stage) and Populate (the producer's). The whole cycle
// is ns/op (so large sizes still run few iterations); prefault-ns/op and
// fill-ns/op split it.
func BenchmarkFill(b *testing.B) {
	size := benchSize(b)
	for _, way := range []struct {
		name               string
		prefault, populate bool
	}{{"memfd", false, false}, {"memfd-prefault", true, false}, {"memfd-populate", false, true}, {"memfd-prefault-populate", true, true}} {
		prefault, populate := way.prefault, way.populate
		b.Run(way.name, func(b *testing.B) {
			var pre, fill time.Duration
			for b.Loop() {
				p, f := cycleWith(b, size, prefault, populate)
				pre += p
				fill += f
			}
			b.ReportMetric(float64(pre.Nanoseconds())/float64(b.N), "prefault-ns/op")
			b.ReportMetric(float64(fill.Nanoseconds())/float64(b.N), "fill-ns/op")
		})
	}
	b.Run("go-slice", func(b *testing.B) {
		var fill time.Duration
		for b.Loop() {
			t0 := time.Now()
			buf := make([]byte, size)
			fillPattern(buf)
			fill += time.Since(t0)
		}
		b.ReportMetric(float64(fill.Nanoseconds())/float64(b.N), "fill-ns/op")
	})
}

// BenchmarkSealWrite times, on a freshly filled segment, what the hand-off
// costs besides the fill: the producer's munmap of its writable view
// (unmap-ms/GiB) and the host's F_SEAL_WRITE (seal-ms/GiB), which the
// kernel accepts only once no writable mapping is left. ns/op includes
// creating and filling the segment.
func BenchmarkSealWrite(b *testing.B) {
	size := benchSize(b)
	var seal, unmap time.Duration
	for b.Loop() {
		s, err := Create("seal", size)
		if err != nil {
			b.Fatal(err)
		}
		m, err := s.MapRW()
		if err != nil {
			b.Fatal(err)
		}
		fillPattern(m.Bytes())
		t0 := time.Now()
		if err := m.Unmap(); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := s.SealWrite(); err != nil {
			b.Fatal(err)
		}
		seal += time.Since(t1)
		unmap += t1.Sub(t0)
		s.Close()
	}
	perGiB := func(d time.Duration) float64 {
		return float64(d.Nanoseconds()) / 1e6 / float64(b.N) / (float64(size) / (1 << 30))
	}
	b.ReportMetric(float64(seal.Nanoseconds())/float64(b.N), "seal-ns/op")
	b.ReportMetric(perGiB(seal), "seal-ms/GiB")
	b.ReportMetric(perGiB(unmap), "unmap-ms/GiB")
}
