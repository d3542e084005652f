package clock

import (
	"testing"

	"golang.org/x/sys/unix"
)

// Now must read CLOCK_MONOTONIC itself: plugins in other languages read
// that clock, and their spans share the host's timeline.
func TestNowIsClockMonotonic(t *testing.T) {
	for range 1000 {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		before := ts.Nano()
		now := Now()
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		if after := ts.Nano(); now < before || now > after {
			t.Fatalf("Now() = %d, not between two CLOCK_MONOTONIC readings %d and %d", now, before, after)
		}
	}
}

func BenchmarkNow(b *testing.B) {
	for b.Loop() {
		Now()
	}
}
