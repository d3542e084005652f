package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// progress shows a run on the terminal: an overall bar and the stages
// running now, redrawn in place on a terminal; one plain line per stage
// start and end otherwise (logs, CI).
type progress struct {
	w     io.Writer
	tty   bool
	color bool
	total int

	mu      sync.Mutex
	done    int
	running map[string]float64
	order   []string
	stop    chan struct{}
	stopped chan struct{}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, tty: isTerminal(w), total: total, running: map[string]float64{},
		stop: make(chan struct{}), stopped: make(chan struct{})}
	_, noColor := os.LookupEnv("NO_COLOR")
	p.color = p.tty && !noColor && os.Getenv("TERM") != "dumb"
	if p.tty {
		go p.loop()
	} else {
		close(p.stopped)
	}
	return p
}

func (p *progress) paint(code, s string) string {
	if !p.color {
		return s
	}
	return "\033[" + code + "m" + s + "\033[0m"
}

func (p *progress) StageStart(n *plan.Node, r *engine.StageResult) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running[n.Name] = 0
	p.order = append(p.order, n.Name)
	if !p.tty {
		fmt.Fprintf(p.w, "start  %s (%s)\n", n.Name, n.Kind)
	}
}

func (p *progress) StageEvent(n *plan.Node, ev *pb.RunEvent) {
	if pr := ev.GetProgress(); pr != nil {
		p.mu.Lock()
		if _, ok := p.running[n.Name]; ok {
			p.running[n.Name] = pr.GetFraction()
		}
		p.mu.Unlock()
	}
}

func (p *progress) StageEnd(n *plan.Node, r *engine.StageResult) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done++
	delete(p.running, n.Name)
	var status string
	switch {
	case r.Status == engine.StatusOK && r.Cache == engine.CacheHit:
		status = p.paint("36", "cached")
	case r.Status == engine.StatusOK:
		status = p.paint("32", "ok    ")
	case r.Status == engine.StatusFailed:
		status = p.paint("31", "FAILED")
	default:
		status = p.paint("33", "skip  ")
	}
	line := fmt.Sprintf("%s %s (%s) %s", status, n.Name, n.Kind, fmtDur(r.EndNs-r.StartNs))
	if r.Cache == engine.CacheMiss && r.MissReason != "" && r.Status == engine.StatusOK {
		line += "  [" + r.MissReason + "]"
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s\n", line)
		p.drawLocked()
	} else {
		fmt.Fprintln(p.w, line)
	}
}

func (p *progress) loop() {
	defer close(p.stopped)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			p.mu.Lock()
			p.drawLocked()
			p.mu.Unlock()
		case <-p.stop:
			p.mu.Lock()
			fmt.Fprint(p.w, "\r\033[K")
			p.mu.Unlock()
			return
		}
	}
}

func (p *progress) drawLocked() {
	const width = 24
	filled := 0
	if p.total > 0 {
		filled = width * p.done / p.total
	}
	bar := strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
	var names []string
	for name := range p.running {
		names = append(names, name)
	}
	sort.Strings(names)
	var parts []string
	for _, name := range names {
		if f := p.running[name]; f > 0 {
			parts = append(parts, fmt.Sprintf("%s %d%%", name, int(f*100)))
		} else {
			parts = append(parts, name)
		}
	}
	line := fmt.Sprintf("%s %d/%d", bar, p.done, p.total)
	if len(parts) > 0 {
		line += "  running: " + strings.Join(parts, ", ")
	}
	if len(line) > 160 {
		line = line[:157] + "..."
	}
	fmt.Fprintf(p.w, "\r\033[K%s", line)
}

func (p *progress) close() {
	if p.tty {
		close(p.stop)
	}
	<-p.stopped
}

func fmtDur(ns int64) string {
	if ns <= 0 {
		return ""
	}
	d := time.Duration(ns)
	if d < time.Second {
		return fmt.Sprintf("%.1f ms", float64(ns)/1e6)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}
