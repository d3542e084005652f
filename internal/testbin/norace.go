//go:build !race

package testbin

// Race is true when the tests run with the race detector: plugins are then
// built with -race too, so a race inside a plugin is found as well.
const Race = false
