// Command misbehave offers stages that break the rules in every way the host
// must survive: panics, exits, crashes (also after writing half an output),
// hangs, writing to a read-only input, log floods, odd hclog lines, a child
// holding stdio, data races, oversized dynamic outputs,
// keeping a writable mapping of an output (writepaths.go has more ways).
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/sdk"
)

type none struct{}

type floodParams struct {
	Lines int `param:"lines" default:"1000"`
}

type blobParams struct {
	Bytes int `param:"bytes" default:"4096"`
}

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
		sdk.Define(sdk.Spec{Kind: "bad-go.halfwrite", Version: "1", Outputs: out}, func(c *sdk.Context, _ none) error {
			g, err := sdk.OutputGrid[float32](c, "out")
			if err != nil {
				return err
			}
			for i := range g.Data[:len(g.Data)/2] {
				g.Data[i] = 7
			}
			fmt.Fprintln(os.Stderr, "bad-go.halfwrite: half written, killing myself")
			// SIGKILL: no deferred cleanup, no unmap, no Result.
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			time.Sleep(time.Hour)
			return nil
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.flood", Version: "1", Outputs: out}, func(c *sdk.Context, p floodParams) error {
			// Plain lines, hclog JSON lines and one huge line with no
			// newline for a while, as fast as stderr takes them.
			w := os.Stderr
			long := strings.Repeat("x", 1<<20)
			for i := 0; i < p.Lines; i++ {
				switch i % 3 {
				case 0:
					fmt.Fprintf(w, "flood line %d %s\n", i, long[:200])
				case 1:
					fmt.Fprintf(w, `{"@level":"info","@message":"flood hclog %d","@timestamp":"2026-12-01T10:00:00.000000Z","n":%d}`+"\n", i, i)
				default:
					c.Infof("flood event %d", i)
				}
				if i == p.Lines/2 {
					fmt.Fprint(w, long, long, "\n")
				}
			}
			return fmt.Errorf("flooded %d lines", p.Lines)
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.forkchild", Version: "1", Outputs: out}, func(c *sdk.Context, _ none) error {
			// A child that keeps our stdout and stderr open after we exit.
			cmd := exec.Command("sleep", "317")
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			if err := cmd.Start(); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "bad-go.forkchild: child %d holds my stdout and stderr; exiting\n", cmd.Process.Pid)
			os.Exit(4)
			return nil
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.badlog", Version: "1", Outputs: out}, func(c *sdk.Context, _ none) error {
			// hclog-shaped JSON whose fields have the wrong types: go-plugin's
			// log reader asserts @message, @level and @timestamp are strings.
			for _, l := range []string{
				`{"@level":"info","@message":42}`,
				`{"@level":"info","@message":{"nested":[1,2]}}`,
				`{"@level":7,"@message":"level is a number"}`,
				`{"@level":"info","@message":"bad time","@timestamp":12}`,
				`{"@level":"info","@message":null}`,
				`[1,2,3]`,
			} {
				fmt.Fprintln(os.Stderr, l)
			}
			g, err := sdk.OutputGrid[float32](c, "out")
			if err != nil {
				return err
			}
			for i := range g.Data {
				g.Data[i] = 3
			}
			return nil
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.race", Version: "1", Outputs: out}, func(c *sdk.Context, _ none) error {
			// Two goroutines write one variable unsynchronised: the race
			// detector reports it when the plugin is built with -race.
			var n int
			done := make(chan struct{})
			go func() { n++; close(done) }()
			n++
			<-done
			g, err := sdk.OutputGrid[float32](c, "out")
			if err != nil {
				return err
			}
			g.Data[0] = float32(n)
			return nil
		}),
		sdk.Define(sdk.Spec{Kind: "bad-go.bigblob", Version: "1", Outputs: []sdk.Port{sdk.BlobPort("blob")}}, func(c *sdk.Context, p blobParams) error {
			b, err := c.NewBlob("blob", p.Bytes)
			if err != nil {
				return err
			}
			for i := range b {
				b[i] = byte(i)
			}
			return nil
		}),
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
