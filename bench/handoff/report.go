package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Results is a whole run: every sample, and what the tables are about.
type Results struct {
	Env     Env
	Sizes   []int64       // sizes measured, in order
	Rounds  map[int64]int // rounds per size
	Samples []Sample
	Skipped []string
}

// Env describes the machine and the run's settings for the report.
type Env struct {
	CPUs      int
	MemTotal  int64
	Kernel    string
	GoVersion string
	ShmemTHP  string
	Chunk     int
	Dir       string
	// Load averages (1 minute) when the run started and ended: the
	// machine may be shared.
	LoadStart, LoadEnd string
}

func readEnv(cfg Config) Env {
	e := Env{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Chunk: cfg.Chunk, Dir: cfg.Dir, ShmemTHP: "unknown"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		e.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled"); err == nil {
		if _, rest, ok := strings.Cut(string(b), "["); ok {
			e.ShmemTHP, _, _ = strings.Cut(rest, "]")
		}
	}
	e.LoadStart = loadAvg()
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var kb int64
			if _, err := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); err == nil {
				e.MemTotal = kb * 1024
			}
		}
		f.Close()
	}
	return e
}

// loadAvg is the 1-minute load average, "?" when unknown.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// median of one field over the samples of a way and size; ok is false when
// there are none.
func (r *Results) median(way Way, size int64, field func(Sample) int64) (int64, bool) {
	var v []int64
	for _, s := range r.Samples {
		if s.Way == way && s.Size == size {
			v = append(v, field(s))
		}
	}
	if len(v) == 0 {
		return 0, false
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2], true
	}
	return (v[n/2-1] + v[n/2]) / 2, true
}

// Sample fields, for median.
var (
	fHandoff   = func(s Sample) int64 { return s.Handoff }
	fFirst     = func(s Sample) int64 { return s.FirstByte }
	fFull      = func(s Sample) int64 { return s.FullRead }
	fE2E       = func(s Sample) int64 { return s.EndToEnd }
	fFill      = func(s Sample) int64 { return s.Fill }
	fPrefault  = func(s Sample) int64 { return s.Prefault }
	fWrite     = func(s Sample) int64 { return s.Write }
	fTail      = func(s Sample) int64 { return s.Tail }
	fSeal      = func(s Sample) int64 { return s.Seal }
	fRead      = func(s Sample) int64 { return s.FullRead - s.FirstByte }
	fHostPeak  = func(s Sample) int64 { return int64(s.HostPeak) }
	fProdPeak  = func(s Sample) int64 { return int64(s.ProducerPeak) }
	fConsPeak  = func(s Sample) int64 { return int64(s.ConsumerPeak) }
	fConsAnon  = func(s Sample) int64 { return int64(s.ConsumerAnon) }
	fConsShmem = func(s Sample) int64 { return int64(s.ConsumerShmem) }
	fWithFill  = func(s Sample) int64 { return s.Fill + s.EndToEnd }
	fWall      = func(s Sample) int64 { return s.Wall }
)

// headlineWays are the like-for-like comparison, in the order shown.
var headlineWays = []Way{WayRun, WayRunNoCache, WayShm, WayGRPC, WayNPY}

// headline writes the like-for-like tables: the same two measures, with
// the same start and end points, for every way.
func (r *Results) headline(bw io.Writer) {
	fmt.Fprintln(bw, "Like for like, every way: *filled → held* runs from the producer's grid being filled (its")
	fmt.Fprintln(bw, "last write, before its Result) to the consumer having read every byte; *with fill* adds the")
	fmt.Fprintln(bw, "producer's fill before it. Host peak is the VmHWM of the pipehost command (from its run log) for")
	fmt.Fprintln(bw, "the run ways and of the harness for the others; *command* is the whole `pipehost run` as a user waits for it.")
	fmt.Fprintln(bw)
	t := NewTable("size", "way", "filled → held ms", "with fill ms", "host peak MiB", "command ms")
	for _, size := range r.Sizes {
		for _, way := range headlineWays {
			if _, ok := r.median(way, size, fE2E); !ok {
				continue
			}
			wall := "–"
			if way == WayRun || way == WayRunNoCache {
				wall = r.msCell(way, size, fWall)
			}
			t.Add(sizeString(size), way.String(), r.msCell(way, size, fE2E), r.msCell(way, size, fWithFill),
				r.mibCell(way, size, fHostPeak), wall)
		}
	}
	t.Write(bw)
	fmt.Fprintln(bw, "\nRatios of the medians above (default = pipehost run with the cache on and cold):")
	fmt.Fprintln(bw)
	t = NewTable("size", "default / --no-cache, filled → held", "default / --no-cache, with fill", "default / --no-cache, command",
		"gRPC / default, filled → held", "gRPC / default, with fill", ".npy / default, with fill")
	for _, size := range r.Sizes {
		t.Add(sizeString(size), r.ratio(WayRun, WayRunNoCache, size, fE2E), r.ratio(WayRun, WayRunNoCache, size, fWithFill),
			r.ratio(WayRun, WayRunNoCache, size, fWall), r.ratio(WayGRPC, WayRun, size, fE2E),
			r.ratio(WayGRPC, WayRun, size, fWithFill), r.ratio(WayNPY, WayRun, size, fWithFill))
	}
	t.Write(bw)
	fmt.Fprintln(bw)
}

// Markdown writes the report: times, ratios, what prefaulting bought, and
// memory.
func (r *Results) Markdown(w io.Writer) error {
	bw := bufio.NewWriter(w)
	e := r.Env
	fmt.Fprintf(bw, "%d CPUs, %s RAM, Linux %s, %s; shmem huge pages: %s; gRPC chunk %s; .npy files in %s.\n",
		e.CPUs, sizeString(e.MemTotal), e.Kernel, e.GoVersion, e.ShmemTHP, sizeString(int64(e.Chunk)), e.Dir)
	fmt.Fprintf(bw, "Load average %s at the start, %s at the end.\n", e.LoadStart, e.LoadEnd)
	fmt.Fprintf(bw, "Medians of %s; the ways are interleaved in every round of one run.\n\n", r.roundsText())
	r.headline(bw)
	fmt.Fprintln(bw, "Details: the host's part (the harness's Result → consumer's request for (a)–(c); producer's")
	fmt.Fprintln(bw, "stage end → consumer's stage start for the run ways), the consumer's first byte and full read from")
	fmt.Fprintln(bw, "its request (its stage start for the run ways):")
	fmt.Fprintln(bw)

	t := NewTable("size", "way", "host hand-off ms", "consumer first byte ms", "consumer full read ms",
		"end to end ms", "producer fill ms", "producer file write ms")
	for _, size := range r.Sizes {
		for _, way := range allWays[:numWays] {
			if _, ok := r.median(way, size, fFill); !ok {
				continue
			}
			if way == WaySlice {
				t.Add(sizeString(size), way.String(), "–", "–", "–", "–", r.msCell(way, size, fFill), "–")
				continue
			}
			write := "–"
			if way == WayNPY {
				write = r.msCell(way, size, fWrite)
			}
			t.Add(sizeString(size), way.String(), r.msCell(way, size, fHandoff), r.msCell(way, size, fFirst),
				r.msCell(way, size, fFull), r.msCell(way, size, fE2E), r.msCell(way, size, fFill), write)
		}
	}
	t.Write(bw)

	fmt.Fprintln(bw, "\nWhere the end to end time of (a) goes: the producer's tail (fill done → its Result at the host,")
	fmt.Fprintln(bw, "mostly unmapping its output view), the host's hand-off and the seal within it, the consumer's first")
	fmt.Fprintln(bw, "byte (fd, checks, mapping) and its read of every byte (page faults of the shared pages):")
	fmt.Fprintln(bw)
	t = NewTable("size", "way", "producer tail ms", "hand-off ms", "of which seal ms", "first byte ms", "read ms", "end to end ms")
	for _, size := range r.Sizes {
		for _, way := range []Way{WayShm, WayShmPrefault} {
			if _, ok := r.median(way, size, fE2E); ok {
				t.Add(sizeString(size), way.String(), r.msCell(way, size, fTail), r.msCell(way, size, fHandoff), r.msCell(way, size, fSeal),
					r.msCell(way, size, fFirst), r.msCell(way, size, fRead), r.msCell(way, size, fE2E))
			}
		}
	}
	t.Write(bw)

	fmt.Fprintln(bw, "\nPrefaulting the output segment (fallocate) before the producer runs, off its critical path:")
	fmt.Fprintln(bw)
	t = NewTable("size", "producer fill ms", "fill, prefaulted ms", "prefault ms", "Go slice fill ms", "end to end ms", "end to end, prefaulted ms")
	for _, size := range r.Sizes {
		t.Add(sizeString(size), r.msCell(WayShm, size, fFill), r.msCell(WayShmPrefault, size, fFill),
			r.msCell(WayShmPrefault, size, fPrefault), r.msCell(WaySlice, size, fFill),
			r.msCell(WayShm, size, fE2E), r.msCell(WayShmPrefault, size, fE2E))
	}
	t.Write(bw)

	fmt.Fprintln(bw, "\nMemory in MiB: peak resident set (VmHWM) of each process during the case; the consumer's")
	fmt.Fprintln(bw, "private (anon) and shared (shmem) resident memory once it had read the whole grid:")
	fmt.Fprintln(bw)
	t = NewTable("size", "way", "host peak", "producer peak", "consumer peak", "consumer anon", "consumer shmem")
	for _, size := range r.Sizes {
		for _, way := range allWays[:numWays] {
			if way == WaySlice {
				continue
			}
			if _, ok := r.median(way, size, fHostPeak); !ok {
				continue
			}
			t.Add(sizeString(size), way.String(), r.mibCell(way, size, fHostPeak), r.mibCell(way, size, fProdPeak),
				r.mibCell(way, size, fConsPeak), r.mibCell(way, size, fConsAnon), r.mibCell(way, size, fConsShmem))
		}
	}
	t.Write(bw)

	var hostMax uint64
	var through int64
	for _, s := range r.Samples {
		if s.Way == WayShm || s.Way == WayShmPrefault {
			hostMax = max(hostMax, s.HostPeak)
			through += s.Size
		}
	}
	fmt.Fprintf(bw, "\nHost peak RSS over every zero-copy case: %.1f MiB, while %s of grids passed through it.\n",
		float64(hostMax)/(1<<20), sizeString(through))
	for _, s := range r.Skipped {
		fmt.Fprintf(bw, "\n%s\n", s)
	}
	return bw.Flush()
}

func (r *Results) roundsText() string {
	var parts []string
	for _, size := range r.Sizes {
		parts = append(parts, fmt.Sprintf("%d rounds at %s", r.Rounds[size], sizeString(size)))
	}
	return strings.Join(parts, ", ")
}

func (r *Results) msCell(way Way, size int64, f func(Sample) int64) string {
	v, ok := r.median(way, size, f)
	if !ok {
		return "–"
	}
	return ms(v)
}

func (r *Results) mibCell(way Way, size int64, f func(Sample) int64) string {
	v, ok := r.median(way, size, f)
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.1f", float64(v)/(1<<20))
}

// ratio is median(num)/median(den) of one field.
func (r *Results) ratio(num, den Way, size int64, f func(Sample) int64) string {
	n, ok1 := r.median(num, size, f)
	d, ok2 := r.median(den, size, f)
	if !ok1 || !ok2 || d <= 0 {
		return "–"
	}
	q := float64(n) / float64(d)
	switch {
	case q >= 10:
		return fmt.Sprintf("%.0f×", q)
	case q < 2:
		return fmt.Sprintf("%.2f×", q)
	}
	return fmt.Sprintf("%.1f×", q)
}

// ms prints nanoseconds as milliseconds with about three significant
// digits.
func ms(ns int64) string {
	v := float64(ns) / 1e6
	switch {
	case v < 0.1:
		return fmt.Sprintf("%.3f", v)
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// Table is a Markdown table. Columns of numbers are right-aligned, the
// rest left-aligned, and every column is padded to its widest cell so the
// source reads as a table too.
type Table struct {
	header []string
	rows   [][]string
}

// NewTable starts a table with its header row.
func NewTable(header ...string) *Table { return &Table{header: header} }

// Add appends a row; missing cells are left empty, extra cells dropped.
func (t *Table) Add(cells ...string) {
	row := make([]string, len(t.header))
	copy(row, cells)
	t.rows = append(t.rows, row)
}

// Write prints the table.
func (t *Table) Write(w io.Writer) {
	width := make([]int, len(t.header))
	right := make([]bool, len(t.header))
	for i, h := range t.header {
		width[i] = max(runeLen(h), 3)
		right[i] = t.numeric(i)
	}
	for _, row := range t.rows {
		for i, c := range row {
			width[i] = max(width[i], runeLen(c))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range cells {
			pad := strings.Repeat(" ", width[i]-runeLen(c))
			if right[i] {
				b.WriteString(" " + pad + c + " |")
			} else {
				b.WriteString(" " + c + pad + " |")
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(t.header)
	rule := make([]string, len(t.header))
	for i := range rule {
		if right[i] {
			rule[i] = strings.Repeat("-", width[i]-1) + ":"
		} else {
			rule[i] = strings.Repeat("-", width[i])
		}
	}
	line(rule)
	for _, row := range t.rows {
		line(row)
	}
}

// numeric reports whether column i holds numbers (plain or as ratios) and
// dashes only, and at least one number.
func (t *Table) numeric(i int) bool {
	seen := false
	for _, row := range t.rows {
		c := strings.TrimSuffix(row[i], "×")
		if c == "–" || c == "" {
			continue
		}
		if strings.Trim(c, "0123456789.") != "" {
			return false
		}
		seen = true
	}
	return seen
}

func runeLen(s string) int { return len([]rune(s)) }
