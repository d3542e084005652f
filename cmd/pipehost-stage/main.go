// Command pipehost-stage runs one stage from files and exits: the command of
// a remote action. It ships with pipehost and travels in the action's input
// root next to the plugin binary and the input files (docs/scale-out.md).
//
//	pipehost-stage [-timeout D] STAGE_JSON OUT_DIR
//
// Exit status: 0 the outputs and OUT_DIR/outputs.json are written; 1 the
// stage failed; 2 a usage error.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pipehost/pipehost/host/remote/stagerun"
)

func main() {
	timeout := flag.Duration("timeout", 0, "bound on the stage's run (0: none)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: pipehost-stage [-timeout D] STAGE_JSON OUT_DIR")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := stagerun.RunFile(ctx, flag.Arg(0), flag.Arg(1), stagerun.Options{Log: os.Stderr, Timeout: *timeout})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pipehost-stage:", err)
		os.Exit(1)
	}
	for _, o := range res.Outputs {
		fmt.Printf("%s %s\n", o.Port, o.Digest)
	}
}
