// Package clock reads CLOCK_MONOTONIC in nanoseconds: the one clock the host
// and every plugin process on a machine agree on, so spans from different
// processes line up on one timeline.
package clock

import "golang.org/x/sys/unix"

// Now returns CLOCK_MONOTONIC in nanoseconds.
func Now() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
