// Command misbehave offers stages that break the rules in every way the host
// must survive: panics, exits, crashes, hangs, writing to a read-only input,
// keeping a writable mapping of an output (writepaths.go has more ways).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/sdk"
)

type none struct{}

func main() {
	helperMode()
	in := []sdk.Port{sdk.GridPort("in", sdk.F32)}
	out := []sdk.Port{sdk.GridPort("out", sdk.F32)}
	sdk.Serve(
		sdk.Define(sdk.Spec{Kind: "bad-go.panic", Version: "1", Outputs: out}, func(c *sdk.Context, _ none) error {
			var m map[string]int
			m["boom"] = 1 // a nil map write: panics
			return nil
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.exit", Version: "1", Outputs: out}, func(c *sdk.Context, _ none) error {
			fmt.Fprintln(os.Stderr, "bad-go.exit: giving up with status 7")
			os.Exit(7)
			return nil
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.segv", Version: "1", Outputs: out}, func(c *sdk.Context, _ none) error {
			fmt.Fprintln(os.Stderr, "bad-go.segv: dereferencing nil in a worker goroutine")
			// Outside the stage's goroutine no recover can catch it: the
			// whole process dies of the SIGSEGV, as a crashing kernel would.
			done := make(chan struct{})
			go func() {
				var p *[1 << 20]float32
				p[1]++
				close(done)
			}()
			<-done
			return nil
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.hang", Version: "1", Outputs: out}, func(c *sdk.Context, _ none) error {
			// Ignores cancellation on purpose.
			time.Sleep(time.Hour)
			return nil
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.writeinput", Version: "1", Inputs: in}, func(c *sdk.Context, _ none) error {
			g, err := sdk.InputGrid[float32](c, "in")
			if err != nil {
				return err
			}
			fmt.Fprintln(os.Stderr, "bad-go.writeinput: writing to my read-only input")
			g.Data[0] = 42 // faults: the mapping is read-only and the segment sealed
			return nil
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.keepmap", Version: "1", Outputs: out}, func(c *sdk.Context, _ none) error {
			g, err := sdk.OutputGrid[float32](c, "out")
			if err != nil {
				return err
			}
			for i := range g.Data {
				g.Data[i] = 1
			}
			// Map our output a second time through /proc and never unmap it.
			return leakWritableMapping(c.Stage() + ".out")
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.mprotect", Version: "1", Outputs: out}, mprotectStage),
		sdk.Define(sdk.Spec{Kind: "bad-go.helper", Version: "1", Outputs: out}, helperStage),
	)
}

// leakWritableMapping finds the memfd named name among our fds and maps it
// writable, leaking the mapping.
func leakWritableMapping(name string) error {
	fds, _ := filepath.Glob("/proc/self/fd/*")
	for _, p := range fds {
		link, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(link, "/memfd:"+name) {
			continue
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		st, _ := f.Stat()
		_, err = unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		f.Close()
		return err
	}
	return fmt.Errorf("no memfd named %q among my fds", name)
}
