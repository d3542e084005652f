// Package runlog writes a run's events as JSON Lines from a background
// goroutine: callers put an event on a bounded queue and never wait on the
// disk; the writer buffers, encodes and flushes periodically. The schema is
// versioned (field "v") and documented in docs/runlog.md.
package runlog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/pipehost/pipehost/internal/clock"
)

// SchemaVersion is the "v" of every record.
const SchemaVersion = 1

// Event is one record. High-volume events (spans, progress, log lines) use
// only the flat fields and are encoded without reflection; rare, rich
// records carry Data, encoded with encoding/json under "data".
type Event struct {
	Type   string
	TimeNs int64 // CLOCK_MONOTONIC; 0 means "now" at enqueue time
	Stage  string
	Name   string
	ID     uint64
	Parent uint64
	Start  int64
	End    int64
	Value  float64
	Msg    string
	Level  string
	// Data is encoded under "data": an *Object as it was built, anything
	// else with encoding/json.
	Data any
}

// Writer is the background JSON Lines writer. Callers append events to a
// bounded list under a lock; the writer takes the whole list when it wakes,
// which is every FlushEvery, when the list holds kickAt events, or on
// Flush and Close. A caller thus never wakes another goroutine for an
// ordinary event: on a busy run that costs more than the event.
type Writer struct {
	path    string
	f       *os.File
	every   time.Duration
	queue   int
	mu      sync.Mutex
	pending []Event
	closed  bool
	kick    chan struct{}      // buffered: the list is long, write it
	flushCh chan chan struct{} // write everything now and say so
	done    chan struct{}      // closed when the writer has finished
	dropped atomic.Int64
	written atomic.Int64
	err     error
}

// kickAt is how many waiting events wake the writer before its next tick.
const kickAt = 512

// Options tune a Writer.
type Options struct {
	// Queue is the number of events that may wait for the writer (default
	// 1<<16). When it is full, events are dropped and counted, never
	// blocking the caller.
	Queue int
	// FlushEvery bounds how long an event waits before it is written to
	// the file (default 200ms).
	FlushEvery time.Duration
}

// Create opens path (creating its directory) and starts the writer.
func Create(path string, opts Options) (*Writer, error) {
	if opts.Queue <= 0 {
		opts.Queue = 1 << 16
	}
	if opts.FlushEvery <= 0 {
		opts.FlushEvery = 200 * time.Millisecond
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("run log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("run log: %w", err)
	}
	w := &Writer{path: path, f: f, every: opts.FlushEvery, queue: opts.Queue,
		kick: make(chan struct{}, 1), flushCh: make(chan chan struct{}), done: make(chan struct{})}
	go w.loop()
	return w, nil
}

// Path is the log file's path.
func (w *Writer) Path() string { return w.path }

// Log enqueues an event. It never blocks: with the queue full the event is
// dropped and counted (reported in the final record), and after Close it
// is dropped too.
func (w *Writer) Log(e Event) {
	if e.TimeNs == 0 {
		e.TimeNs = clock.Now()
	}
	w.mu.Lock()
	if w.closed || len(w.pending) >= w.queue {
		w.mu.Unlock()
		w.dropped.Add(1)
		return
	}
	w.pending = append(w.pending, e)
	if n := len(w.pending); n == kickAt || n == w.queue {
		select { // under mu: Close closes kick under it too
		case w.kick <- struct{}{}:
		default:
		}
	}
	w.mu.Unlock()
}

// Dropped is the number of events lost to a full queue.
func (w *Writer) Dropped() int64 { return w.dropped.Load() }

// Flush waits until everything logged so far is on disk (in the page
// cache).
func (w *Writer) Flush() {
	ack := make(chan struct{})
	select {
	case w.flushCh <- ack:
		<-ack
	case <-w.done:
	}
}

// Close writes everything logged before it, closes the file and stops the
// writer. The last event a caller logs before Close is in the file when
// Close returns.
func (w *Writer) Close() error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.kick)
	}
	w.mu.Unlock()
	<-w.done
	return w.err
}

func (w *Writer) loop() {
	defer close(w.done)
	bw := bufio.NewWriterSize(w.f, 256<<10)
	tick := time.NewTicker(w.every)
	defer tick.Stop()
	var buf []byte
	var batch []Event
	keep := func(err error) {
		if err != nil && w.err == nil {
			w.err = err
		}
	}
	// drain writes every waiting event into bw.
	drain := func() {
		w.mu.Lock()
		batch, w.pending = w.pending, batch[:0]
		w.mu.Unlock()
		for i := range batch {
			buf = append(Append(buf[:0], batch[i]), '\n')
			_, err := bw.Write(buf)
			keep(err)
			batch[i] = Event{} // let its Data go
		}
		w.written.Add(int64(len(batch)))
	}
	for {
		select {
		case _, open := <-w.kick:
			drain()
			if !open {
				keep(bw.Flush())
				keep(w.f.Close())
				return
			}
		case ack := <-w.flushCh:
			drain()
			keep(bw.Flush())
			close(ack)
		case <-tick.C:
			drain()
			if bw.Buffered() > 0 {
				keep(bw.Flush())
			}
		}
	}
}

// Append encodes e as one JSON object (no newline).
func Append(b []byte, e Event) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, SchemaVersion, 10)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	b = append(b, `,"t_ns":`...)
	b = strconv.AppendInt(b, e.TimeNs, 10)
	if e.Stage != "" {
		b = append(b, `,"stage":`...)
		b = appendString(b, e.Stage)
	}
	if e.Name != "" {
		b = append(b, `,"name":`...)
		b = appendString(b, e.Name)
	}
	if e.ID != 0 {
		b = append(b, `,"id":`...)
		b = strconv.AppendUint(b, e.ID, 10)
	}
	if e.Parent != 0 {
		b = append(b, `,"parent":`...)
		b = strconv.AppendUint(b, e.Parent, 10)
	}
	if e.Start != 0 || e.End != 0 {
		b = append(b, `,"start_ns":`...)
		b = strconv.AppendInt(b, e.Start, 10)
		b = append(b, `,"end_ns":`...)
		b = strconv.AppendInt(b, e.End, 10)
		b = append(b, `,"dur_ns":`...)
		b = strconv.AppendInt(b, e.End-e.Start, 10)
	}
	if e.Type == "progress" {
		b = append(b, `,"fraction":`...)
		b = appendFloat(b, e.Value)
	}
	if e.Level != "" {
		b = append(b, `,"level":`...)
		b = appendString(b, e.Level)
	}
	if e.Msg != "" {
		b = append(b, `,"msg":`...)
		b = appendString(b, e.Msg)
	}
	if o, ok := e.Data.(*Object); ok {
		b = append(b, `,"data":`...)
		b = o.appendJSON(b)
	} else if e.Data != nil {
		if raw, err := json.Marshal(e.Data); err == nil {
			b = append(b, `,"data":`...)
			b = append(b, raw...)
		} else {
			b = append(b, `,"data_error":`...)
			b = appendString(b, err.Error())
		}
	}
	return append(b, '}')
}

// appendFloat writes f as encoding/json does (shortest form, with an
// exponent only below 1e-6 or from 1e21 on), so a hand-encoded record reads
// the same as a marshalled one.
func appendFloat(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, "null"...)
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-07 → e-7, as encoding/json writes it.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hex = "0123456789abcdef"

// appendString writes s as a JSON string; invalid UTF-8 becomes U+FFFD so
// every line stays valid JSON whatever a plugin printed.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c >= 0x20:
				b = append(b, c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c == '\r':
				b = append(b, '\\', 'r')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
