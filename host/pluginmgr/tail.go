package pluginmgr

import (
	"bytes"
	"sync"
)

// Tail keeps the last lines a plugin wrote to stderr, for failure reports.
type Tail struct {
	mu    sync.Mutex
	lines []string
	max   int
	part  []byte
	// OnLine, when set, sees every complete line (the run log uses it).
	OnLine func(line string)
}

// NewTail keeps up to max lines.
func NewTail(max int) *Tail { return &Tail{max: max} }

// Write splits p into lines; it never fails.
func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
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
	if t.OnLine != nil {
		t.OnLine(line)
	}
	if len(line) > 1000 {
		line = line[:1000] + "…"
	}
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
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
