package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"

	"github.com/pipehost/pipehost/shm"
)

// SegmentDigest reads small segments with pread and maps larger ones a
// window at a time: both give the SHA-256 of the bytes, at every size
// around the edges between them.
func TestSegmentDigestMatchesSHA256(t *testing.T) {
	for _, size := range []int64{0, 1, 256, smallDigest - 1, smallDigest, smallDigest + 1, 3 << 20, digestWindow + 4097} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			s := sealedSegment(t, size)
			defer s.Close()
			want := sha256.New()
			if size > 0 {
				m, err := s.MapRO()
				if err != nil {
					t.Fatal(err)
				}
				want.Write(m.Bytes())
				m.Unmap()
			}
			got, err := SegmentDigest(s)
			if err != nil {
				t.Fatal(err)
			}
			if w := hex.EncodeToString(want.Sum(nil)); got.Hash != w || got.Size != size {
				t.Fatalf("digest %s (%d bytes), want %s (%d bytes)", got.Hash, got.Size, w, size)
			}
		})
	}
}

// A segment not yet write-sealed is never digested, whatever its size.
func TestSegmentDigestRefusesUnsealed(t *testing.T) {
	for _, size := range []int64{256, 2 << 20} {
		s, err := shm.Create("unsealed", size)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := SegmentDigest(s); !errors.Is(err, shm.ErrNotSealed) {
			t.Errorf("%d bytes: got %v, want ErrNotSealed", size, err)
		}
		s.Close()
	}
}

// BenchmarkDigestSmall compares, for the small outputs every stage of a
// no-op chain has, SegmentDigest (pread) with hashing through a read-only
// mapping of the same segment, as SegmentDigest did before: same segment,
// same hash, alternated by the benchmark runner.
func BenchmarkDigestSmall(b *testing.B) {
	for _, size := range []int64{256, 4 << 10, smallDigest} {
		s := sealedSegment(b, size)
		defer s.Close()
		b.Run(fmt.Sprintf("%d/pread", size), func(b *testing.B) {
			for b.Loop() {
				if _, err := SegmentDigest(s); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d/mapped", size), func(b *testing.B) {
			for b.Loop() {
				m, err := s.MapRO()
				if err != nil {
					b.Fatal(err)
				}
				h := sha256.Sum256(m.Bytes())
				_ = h
				if err := m.Unmap(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
