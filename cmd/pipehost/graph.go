package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/runner"
)

func cmdGraph(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("graph", "CONFIG [--format dot|mermaid] [flags]", stderr)
	var common commonFlags
	common.register(fs)
	format := fs.String("format", "dot", "dot or mermaid")
	opts, code, ok := common.parseConfigArgs(fs, args, stderr)
	if !ok {
		return code
	}
	if *format != "dot" && *format != "mermaid" {
		fs.Usage()
		return exitUsage
	}
	ctx, stop := signalContext()
	defer stop()
	sess, err := runner.Open(ctx, opts)
	if err != nil {
		return report(stderr, err)
	}
	defer sess.Close()
	if *format == "dot" {
		writeDOT(stdout, sess.Plan)
	} else {
		writeMermaid(stdout, sess.Plan)
	}
	return exitOK
}

func writeDOT(w io.Writer, p *plan.Plan) {
	fmt.Fprintf(w, "digraph %q {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n", p.Config.RunID)
	for _, n := range p.Nodes {
		fmt.Fprintf(w, "  %q [label=\"%s\\n%s\"];\n", n.Name, n.Name, n.Kind)
	}
	for _, n := range p.Nodes {
		for _, e := range n.Inputs {
			fmt.Fprintf(w, "  %q -> %q [label=%q];\n", e.From.Name, n.Name, e.Output.GetName()+" → "+e.Input.GetName())
		}
	}
	fmt.Fprintln(w, "}")
}

func writeMermaid(w io.Writer, p *plan.Plan) {
	id := func(s string) string { return "s_" + strings.NewReplacer("-", "_").Replace(s) }
	fmt.Fprintln(w, "flowchart LR")
	for _, n := range p.Nodes {
		fmt.Fprintf(w, "  %s[\"%s<br/><small>%s</small>\"]\n", id(n.Name), n.Name, n.Kind)
	}
	for _, n := range p.Nodes {
		for _, e := range n.Inputs {
			fmt.Fprintf(w, "  %s -->|%s → %s| %s\n", id(e.From.Name), e.Output.GetName(), e.Input.GetName(), id(n.Name))
		}
	}
}
