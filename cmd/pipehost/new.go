package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/pipehost/pipehost/host/scaffold"
)

func cmdNew(args []string, stdout, stderr io.Writer) int {
	langs := strings.Join(scaffold.Langs(), "|")
	fs := newFlagSet("new", "stage KIND --lang "+langs+" [--dir DIR]", stderr)
	lang := fs.String("lang", "", "the SDK language: "+strings.Join(scaffold.Langs(), ", "))
	dir := fs.String("dir", "", "the project directory (default: the kind with dashes, e.g. terrain-smooth); must not exist or be empty")
	repo := fs.String("repo", "", "the pipehost checkout whose SDKs the project uses (default: the one this pipehost binary was built in)")
	pos, err := parse(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 2 || pos[0] != "stage" {
		fmt.Fprintln(stderr, "pipehost new: want `new stage KIND --lang LANG`, e.g. pipehost new stage terrain.smooth --lang go")
		return exitUsage
	}
	if *lang == "" {
		fmt.Fprintf(stderr, "pipehost new: --lang is required: one of %s\n", strings.Join(scaffold.Langs(), ", "))
		return exitUsage
	}
	if *repo == "" {
		exe, err := os.Executable()
		if err == nil {
			*repo, err = scaffold.FindRepo(exe)
		}
		if err != nil {
			fmt.Fprintln(stderr, "pipehost new:", err)
			return exitUsage
		}
	} else {
		abs, err := filepath.Abs(*repo)
		if err == nil {
			err = scaffold.CheckRepo(abs)
		}
		if err != nil {
			fmt.Fprintf(stderr, "pipehost new: --repo %s: %v\n", *repo, err)
			return exitUsage
		}
		*repo = abs
	}
	data, err := scaffold.NewData(pos[1], *repo, version)
	if err != nil {
		fmt.Fprintln(stderr, "pipehost new:", err)
		return exitUsage
	}
	if *dir == "" {
		*dir = data.Dir
	} else {
		data.Dir = filepath.Base(filepath.Clean(*dir))
	}
	if err := scaffold.Write(*lang, data, *dir); err != nil {
		fmt.Fprintln(stderr, "pipehost new:", err)
		return exitUsage
	}
	fmt.Fprintf(stdout, "wrote %s: a %s project with the stage %s, its test and pipeline.toml\nnext: cd %s and follow README.md\n",
		*dir, *lang, data.Kind, *dir)
	return exitOK
}
