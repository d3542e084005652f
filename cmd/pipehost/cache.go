package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/pipehost/pipehost/host/cache"
	"github.com/pipehost/pipehost/internal/units"
)

func cmdCache(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("cache", "ls|gc|clear [--cache-dir DIR] [--max-size SIZE]", stderr)
	dir := fs.String("cache-dir", cache.DefaultDir(), "stage cache directory")
	maxSize := byteSize(10 << 30)
	fs.Var(&maxSize, "max-size", "gc: collect down to this size, least recently used first")
	pos, err := parse(fs, args)
	if err != nil {
		return flagExit(err)
	}
	if len(pos) != 1 {
		fs.Usage()
		return exitUsage
	}
	c, err := cache.Open(*dir)
	if err != nil {
		return report(stderr, err)
	}
	defer c.Close()
	switch pos[0] {
	case "ls":
		entries, err := c.List()
		if err != nil {
			return report(stderr, err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tSTAGE\tKIND\tSIZE\tLAST USED")
		var total int64
		for _, e := range entries {
			total += e.Bytes
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Key[:16], e.Stage, e.Kind, units.Bytes(e.Bytes), e.LastUsed.Format(time.DateTime))
		}
		tw.Flush()
		fmt.Fprintf(stdout, "%d entries, %s of outputs, %s on disk in %s\n", len(entries), units.Bytes(total), units.Bytes(c.Usage()), c.Root())
	case "gc":
		res, err := c.GC(int64(maxSize))
		if err != nil {
			return report(stderr, err)
		}
		fmt.Fprintf(stdout, "removed %d entries and %d blobs (%s); %s left\n", res.Entries, res.Blobs, units.Bytes(res.Bytes), units.Bytes(c.Usage()))
	case "clear":
		if err := c.Clear(); err != nil {
			return report(stderr, err)
		}
		fmt.Fprintf(stdout, "cleared %s\n", c.Root())
	default:
		fs.Usage()
		return exitUsage
	}
	return exitOK
}
