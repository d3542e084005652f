package xfer

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/pipehost/pipehost/shm"
)

// Block is the fill pattern's period in float32 elements (4 KiB). Grid
// sizes are whole blocks.
const Block = 1024

// value is element k of a block for a given seed: small integers plus a
// seed-dependent quarter step, all exact in float32.
func value(seed uint64, k int) float32 {
	return float32(k) + float32(seed%1021)/4
}

// Fill writes the pattern over dst at memory speed, 8 bytes per store
// from a 4 KiB table, so the time measured is the cost of the memory (page
// faults, zeroing, bandwidth) rather than of arithmetic. It is a plain
// loop, not copy: the runtime cannot preempt a goroutine inside one long
// memmove, and a garbage collection started meanwhile would keep signalling
// it through every page fault.
func Fill(dst []float32, seed uint64) {
	var block [Block]float32
	for k := range block {
		block[k] = value(seed, k)
	}
	b := Bytes(dst)
	if uintptr(unsafe.Pointer(unsafe.SliceData(b)))%8 != 0 || len(b)%8 != 0 {
		for i := range dst {
			dst[i] = block[i%Block]
		}
		return
	}
	pattern := (*[Block / 2]uint64)(unsafe.Pointer(&block))
	words := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8)
	for i := range words {
		words[i] = pattern[i%(Block/2)]
	}
}

// ExpectedSum is what Sum returns for a grid of nbytes filled by Fill with
// seed. Little-endian uint64 word j holds elements 2j (low half) and 2j+1.
func ExpectedSum(seed uint64, nbytes int64) uint64 {
	var block uint64
	for k := range Block {
		bits := uint64(math.Float32bits(value(seed, k)))
		if k%2 == 1 {
			bits <<= 32
		}
		block += bits
	}
	return block * uint64(nbytes/(4*Block))
}

// CheckSize says whether nbytes is a grid size the benchmark can use.
func CheckSize(nbytes int64) error {
	if nbytes <= 0 || nbytes%(4*Block) != 0 {
		return fmt.Errorf("grid size %d bytes is not a positive multiple of %d", nbytes, 4*Block)
	}
	return nil
}

// Sum reads every byte of b as little-endian uint64 words and adds them up,
// wrapping; the result is used, so the reads cannot be optimised away. b's
// length is a multiple of 8 and it is 8-byte aligned (mappings and Go
// allocations are).
func Sum(b []byte) (uint64, error) {
	words, err := shm.View[uint64](b)
	if err != nil {
		return 0, err
	}
	var s0, s1, s2, s3 uint64
	i := 0
	for ; i+4 <= len(words); i += 4 {
		s0 += words[i]
		s1 += words[i+1]
		s2 += words[i+2]
		s3 += words[i+3]
	}
	for ; i < len(words); i++ {
		s0 += words[i]
	}
	return s0 + s1 + s2 + s3, nil
}

// Bytes views a float32 slice as its bytes, without copying.
func Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))
}

// Shape is the grid's [height, width] for nbytes of float32: as square as a
// power-of-two split allows (1 GiB is 16384×16384).
func Shape(nbytes int64) (height, width uint64) {
	n := uint64(nbytes / 4)
	width = 1
	for width*width*4 <= n && n%(width*2) == 0 {
		width *= 2
	}
	return n / width, width
}
