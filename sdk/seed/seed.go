// Package seed derives every random stream of a run from the run's 64-bit seed.
//
// The generator is SplitMix64 exactly as Vigna's reference splitmix64.c. A stage's
// seed is keyed by the run seed and the stage instance name (StageSeed); a Stream
// forks per tile, row or label without consuming its own state, so the values a
// stage draws do not depend on scheduling or on how many workers share the work.
//
// Every operation is defined byte-precisely in docs/seeds.md and pinned by
// testdata/seeds.json, which the C++ and Rust SDKs read too.
package seed

// Gamma is SplitMix64's increment (the odd integer nearest 2^64/φ).
const Gamma uint64 = 0x9E3779B97F4A7C15

// FNV-1a 64-bit parameters.
const (
	fnvOffset uint64 = 0xCBF29CE484222325
	fnvPrime  uint64 = 0x100000001B3
)

// Mix64 is SplitMix64's output function (variant 13 of Stafford's mixer): a
// bijection on uint64.
func Mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// SplitMix64 is the reference generator; its value is the state.
type SplitMix64 uint64

// Next advances the state by Gamma and returns the mixed state.
func (s *SplitMix64) Next() uint64 {
	*s += SplitMix64(Gamma)
	return Mix64(uint64(*s))
}

// FNV1a64 hashes the bytes of s (a UTF-8 name, taken as is: no normalisation).
func FNV1a64(s string) uint64 {
	h := fnvOffset
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// Derive returns the key of the sub-stream `word` of the stream keyed by key:
// the first SplitMix64 output of state (first SplitMix64 output of state key) XOR word.
// Mixing the key before the XOR keeps runs apart: with a bare key^word, run seeds
// r and r^h1^h2 would hand stage 1 of one run the seed of stage 2 of the other.
func Derive(key, word uint64) uint64 {
	return Mix64((Mix64(key+Gamma) ^ word) + Gamma)
}

// StageSeed is the seed of the stage instance named stage in the run seeded runSeed.
// For one run seed, two names collide only if their FNV-1a hashes do.
func StageSeed(runSeed uint64, stage string) uint64 {
	return Derive(runSeed, FNV1a64(stage))
}

// Stream is a SplitMix64 stream that remembers the key it started from, so
// forks depend on the key alone, not on how much has been drawn.
// The zero value is the stream keyed 0.
type Stream struct {
	key   uint64
	state uint64
}

// New returns the stream keyed seed; its state starts at seed.
func New(seed uint64) Stream { return Stream{key: seed, state: seed} }

// ForStage returns the stream of a stage instance: New(StageSeed(runSeed, stage)),
// which equals New(runSeed).Child(stage).
func ForStage(runSeed uint64, stage string) Stream {
	return New(StageSeed(runSeed, stage))
}

// Seed returns the key the stream started from.
func (s Stream) Seed() uint64 { return s.key }

// Uint64 returns the next SplitMix64 output.
func (s *Stream) Uint64() uint64 {
	s.state += Gamma
	return Mix64(s.state)
}

// Float64 returns a float in [0, 1): the top 53 bits of Uint64 times 2^-53,
// exact in binary64, so every SDK returns the same bits.
func (s *Stream) Float64() float64 {
	return float64(s.Uint64()>>11) * 0x1p-53
}

// Uint64n returns a uniform integer in [0, n). It rejects draws below 2^64 mod n
// and reduces the rest modulo n. It panics if n is 0.
func (s *Stream) Uint64n(n uint64) uint64 {
	if n == 0 {
		panic("seed: Uint64n called with n == 0")
	}
	floor := -n % n // 2^64 mod n: the draws that would bias the result
	for {
		if x := s.Uint64(); x >= floor {
			return x % n
		}
	}
}

// Intn returns a uniform integer in [0, n), drawn as Uint64n(n). It panics if n <= 0.
func (s *Stream) Intn(n int) int {
	if n <= 0 {
		panic("seed: Intn called with n <= 0")
	}
	return int(s.Uint64n(uint64(n)))
}

// Fork returns sub-stream i (a tile, a row, an iteration): New(Derive(key, i)).
// It does not touch s's state.
func (s Stream) Fork(i uint64) Stream { return New(Derive(s.key, i)) }

// Child returns the sub-stream named label: Fork(FNV1a64(label)).
func (s Stream) Child(label string) Stream { return s.Fork(FNV1a64(label)) }
