package cache

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"

	"github.com/pipehost/pipehost/internal/atomicfile"
)

// partsLog remembers the key parts of each stage's last run, for the next
// run's miss reasons. It is one append-only file per run ID of JSON lines
// ({"stage": …, "parts": …}; a later line wins), read once per process and
// compacted to one line per stage the first time this process appends to
// it: a miss then costs one write, not a file created per stage.
type partsLog struct {
	dir string

	mu   sync.Mutex
	runs map[string]*runParts
}

type runParts struct {
	last      map[string]Parts
	compacted bool     // this process has rewritten the file and now appends
	file      *os.File // open for appending once compacted, until Close
}

type partsLine struct {
	Stage string `json:"stage"`
	Parts Parts  `json:"parts"`
}

func (l *partsLog) path(run string) string {
	sum := sha256.Sum256([]byte(run))
	return filepath.Join(l.dir, hex.EncodeToString(sum[:12])+".jsonl")
}

// load returns run's parts, reading its file the first time. Lines that do
// not parse (a write cut short) are skipped.
func (l *partsLog) load(run string) *runParts {
	if rp, ok := l.runs[run]; ok {
		return rp
	}
	rp := &runParts{last: map[string]Parts{}}
	if b, err := os.ReadFile(l.path(run)); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			var pl partsLine
			if json.Unmarshal(sc.Bytes(), &pl) == nil && pl.Stage != "" {
				rp.last[pl.Stage] = pl.Parts
			}
		}
	}
	if l.runs == nil {
		l.runs = map[string]*runParts{}
	}
	l.runs[run] = rp
	return rp
}

// LastParts returns the key parts of the last run of a stage, if any.
func (c *Cache) LastParts(run, stage string) *Parts {
	l := &c.parts
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.load(run).last[stage]
	if !ok {
		return nil
	}
	return &p
}

// SaveParts records the key parts of a stage's run.
func (c *Cache) SaveParts(run, stage string, p Parts) error {
	l := &c.parts
	l.mu.Lock()
	defer l.mu.Unlock()
	rp := l.load(run)
	rp.last[stage] = p
	if !rp.compacted {
		// Compact: what is known now, one line per stage, replaces the file
		// atomically; this process then appends.
		var buf bytes.Buffer
		for s, q := range rp.last {
			if s == stage {
				continue
			}
			appendLine(&buf, s, q)
		}
		appendLine(&buf, stage, p)
		if err := atomicfile.Write(l.path(run), buf.Bytes()); err != nil {
			return err
		}
		rp.compacted = true
		return nil
	}
	var buf bytes.Buffer
	appendLine(&buf, stage, p)
	if rp.file == nil {
		f, err := os.OpenFile(l.path(run), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		rp.file = f
	}
	// One write of a whole line: appends from concurrent runs interleave by
	// line.
	_, err := rp.file.Write(buf.Bytes())
	return err
}

// forget closes the files and drops what was read (the files are gone or
// the cache is closing).
func (l *partsLog) forget() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, rp := range l.runs {
		if rp.file != nil {
			rp.file.Close()
		}
	}
	l.runs = nil
}

func appendLine(buf *bytes.Buffer, stage string, p Parts) {
	b, _ := json.Marshal(partsLine{stage, p})
	buf.Write(b)
	buf.WriteByte('\n')
}
