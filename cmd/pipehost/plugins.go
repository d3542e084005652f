package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/runner"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

func cmdPlugins(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("plugins", "[--json] [--plugin-dir DIR]... [--cache-dir DIR]", stderr)
	var common commonFlags
	common.register(fs)
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	pos, err := parse(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 0 {
		fs.Usage()
		return exitUsage
	}
	opts, _ := common.options("")
	opts.Warn = func(msg string) { fmt.Fprintln(stderr, "pipehost:", msg) }
	ctx, stop := signalContext()
	defer stop()
	mgr, plugins, _, err := runner.StartPlugins(ctx, opts)
	if err != nil {
		return report(stderr, err)
	}
	defer mgr.Close()
	if *asJSON {
		type pluginJSON struct {
			Path       string                `json:"path"`
			Digest     string                `json:"sha256"`
			SDK        string                `json:"sdk"`
			SDKVersion string                `json:"sdk_version"`
			LaunchMs   float64               `json:"launch_ms"`
			Stages     []*pb.StageDescriptor `json:"stages"`
		}
		var out []pluginJSON
		for _, p := range plugins {
			out = append(out, pluginJSON{p.Path, p.Digest(), p.SDK, p.SDKVersion, float64(p.LaunchNs) / 1e6, p.Stages})
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return report(stderr, err)
		}
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tVERSION\tINPUTS\tOUTPUTS\tPARAMS\tPLUGIN")
	for _, p := range plugins {
		for _, d := range p.Stages {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s (%s)\n", d.GetKind(), d.GetVersion(),
				ports(d.GetInputs()), ports(d.GetOutputs()), params(d.GetParams()), p.Path, p.SDK)
		}
	}
	tw.Flush()
	return exitOK
}

func ports(ps []*pb.Port) string {
	if len(ps) == 0 {
		return "-"
	}
	var parts []string
	for _, p := range ps {
		s := p.GetName() + ":" + plan.KindName(p.GetKind())
		if p.GetKind() == pb.PortKind_PORT_KIND_GRID {
			s += "<" + plan.DTypeName(p.GetDtype())
			if p.GetLevel() > 0 {
				s += fmt.Sprintf(",L%d", p.GetLevel())
			}
			s += ">"
		}
		if p.GetOptional() {
			s += "?"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

func params(ps []*pb.ParamSpec) string {
	if len(ps) == 0 {
		return "-"
	}
	var parts []string
	for _, p := range ps {
		parts = append(parts, p.GetName())
	}
	return strings.Join(parts, " ")
}
