// Package clock reads CLOCK_MONOTONIC in nanoseconds: the one clock the host
// and every plugin process on a machine agree on, so spans from different
// processes line up on one timeline.
package clock

import _ "unsafe" // for go:linkname

// nanotime is the runtime's CLOCK_MONOTONIC reading, through the vDSO: a
// few tens of nanoseconds, where a clock_gettime system call costs ten
// times that, and is read several times per stage on both sides.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// Now returns CLOCK_MONOTONIC in nanoseconds.
func Now() int64 { return nanotime() }
