package pluginmgr

import (
	"bytes"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Tail keeps the last lines a plugin wrote to stderr, for failure reports.
type Tail struct {
	mu    sync.Mutex
	lines []string
	max   int
	// said keeps the recent lines that are not stack frames: a Go crash
	// dumps hundreds of frame lines after the one line that matters.
	said []string
	part []byte
	last time.Time
	// onLine, when set, sees every complete line (the run log uses it).
	onLine func(line string)
}

// NewTail keeps up to max lines.
func NewTail(max int) *Tail { return &Tail{max: max} }

// Write splits p into lines; it never fails.
func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last = time.Now()
	data := append(t.part, p...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		t.add(string(data[:i]))
		data = data[i+1:]
	}
	// Bound a partial line so a plugin printing without newlines cannot
	// grow the host's memory.
	if len(data) > 64<<10 {
		data = data[len(data)-64<<10:]
	}
	t.part = append([]byte(nil), data...)
	return len(p), nil
}

func (t *Tail) add(line string) {
	if line == "" {
		return
	}
	if t.onLine != nil {
		t.onLine(line)
	}
	if len(line) > 1000 {
		line = line[:1000] + "…"
	}
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
	if !isFrame(line) {
		t.said = append(t.said, line)
		if len(t.said) > 64 {
			t.said = t.said[len(t.said)-64:]
		}
	}
}

// Lines returns the kept lines, oldest first, including a trailing partial
// line.
func (t *Tail) Lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]string(nil), t.lines...)
	if len(t.part) > 0 {
		out = append(out, string(t.part))
	}
	return out
}

// goFrame matches the lines of a Go stack dump that carry no message:
// function frames, "goroutine N [...]:" headers and "created by" lines.
var goFrame = regexp.MustCompile(`^(goroutine \d+ .*:|created by .*|[\w./*()\[\]-]+\(.*\)|\.\.\.additional frames elided\.\.\.|exit status \d+)$`)

// Excerpt returns up to n of the most recent lines that say something:
// stack frames (tab-indented file lines, Go frame lines, goroutine headers)
// are left out, so a crash report shows "panic: …" and "[signal SIGSEGV …]"
// rather than the tail of a goroutine dump.
func (t *Tail) Excerpt(n int) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]string(nil), t.said...)
	if len(t.part) > 0 && !isFrame(string(t.part)) {
		out = append(out, string(t.part))
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

func isFrame(l string) bool {
	return strings.HasPrefix(l, "\t") || strings.TrimSpace(l) == "" || goFrame.MatchString(strings.TrimSpace(l))
}

// Settle waits until nothing has been written for quiet (at most max), so a
// report made right after a crash includes the crash's own lines.
func (t *Tail) Settle(quiet, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		t.mu.Lock()
		idle := time.Since(t.last)
		t.mu.Unlock()
		if idle >= quiet {
			return
		}
		time.Sleep(quiet - idle)
	}
}

// SetOnLine sets the function that sees every complete line from now on.
func (t *Tail) SetOnLine(f func(line string)) {
	t.mu.Lock()
	t.onLine = f
	t.mu.Unlock()
}
