// Command pipehost runs DAGs of grid-generation stages that live in plugin
// executables.
//
// Exit status: 0 success, 1 the run failed (a stage failed or the run was
// interrupted), 2 usage, config, plugin or plan error (nothing ran).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/pipehost/pipehost/host/runner"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"run", "run a pipeline", cmdRun},
		{"validate", "check a pipeline config against the plugins without running it", cmdValidate},
		{"graph", "print a pipeline's DAG as DOT or Mermaid", cmdGraph},
		{"lock", "record the SHA-256 of the plugins a pipeline uses in pipehost.lock beside it", cmdLock},
		{"plugins", "list plugins and the stage kinds they offer", cmdPlugins},
		{"cache", "list, collect or clear the stage-output cache", cmdCache},
		{"new", "start a stage project: new stage KIND --lang go|rust|cpp|python", cmdNew},
		{"version", "print the version", cmdVersion},
	}
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "pipehost: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: pipehost <command> [arguments]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'pipehost <command> --help' for a command's flags.")
	fmt.Fprintln(w, "Exit status: 0 success, 1 the run failed, 2 usage, config, plugin or plan error.")
}

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// parse parses flags that may come before or after positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pipehost %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// report prints an error and maps it to an exit status.
func report(stderr io.Writer, err error) int {
	fmt.Fprintln(stderr, "pipehost:", err)
	var se *runner.SetupError
	if errors.As(err, &se) {
		return exitUsage
	}
	return exitFailed
}

// signalContext is cancelled on SIGINT or SIGTERM; a second signal exits at
// once (children still die with us through Pdeathsig).
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig, ok := <-ch
		if !ok {
			return
		}
		cancel(fmt.Errorf("interrupted by %s", sig))
		if _, ok := <-ch; ok {
			os.Exit(130)
		}
	}()
	return ctx, func() { signal.Stop(ch); close(ch); cancel(nil) }
}

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "", stderr)
	if _, err := parse(fs, args); err != nil {
		return flagExit(err)
	}
	fmt.Fprintf(stdout, "pipehost %s (protocol pipehost.v1)\n", version)
	return exitOK
}

func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}
