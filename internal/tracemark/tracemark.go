// Package tracemark writes stage and subtask markers to the kernel's tracefs
// trace_marker file in the systrace text format that Perfetto and trace-cmd
// read, so a system profiler shows pipehost's stages next to what the kernel
// and other processes did (docs/runlog.md, "System profilers"):
//
//	B|<pid>|<name>            begin a slice on the writing thread
//	E|<pid>                   end the writing thread's innermost slice
//	S|<pid>|<name>|<cookie>   begin an async slice (may end on another thread)
//	F|<pid>|<name>|<cookie>   end it
//	C|<pid>|<name>|<value>    set a counter
//
// The file is opened once per process; every marker is one write(2), which
// the kernel records atomically. While markers are off nothing is opened and
// a marker costs one branch on a flag.
package tracemark

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// maxName bounds a marker's name; the kernel truncates a write past 4 KiB.
const maxName = 512

var (
	on   atomic.Bool
	fd   = -1
	pid  []byte
	path string

	openMu  sync.Mutex
	openErr error
	opened  bool
)

// Find returns the trace_marker path of the mounted tracefs: tracefs itself
// (normally /sys/kernel/tracing), else the tracing directory of a mounted
// debugfs.
func Find() (string, error) { return findIn("/proc/mounts") }

func findIn(mounts string) (string, error) {
	f, err := os.Open(mounts)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var debugfs string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		mnt := unescapeMount(fields[1])
		switch fields[2] {
		case "tracefs":
			return mnt + "/trace_marker", nil
		case "debugfs":
			if debugfs == "" {
				debugfs = mnt
			}
		}
	}
	if debugfs != "" {
		p := debugfs + "/tracing/trace_marker"
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no tracefs is mounted (mount -t tracefs nodev /sys/kernel/tracing)")
}

// unescapeMount undoes /proc/mounts' octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Open opens p for markers, once per process: later calls return the first
// call's result, whatever path they name. It does not turn markers on.
func Open(p string) error {
	openMu.Lock()
	defer openMu.Unlock()
	if opened {
		return openErr
	}
	opened = true
	f, err := unix.Open(p, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		openErr = fmt.Errorf("trace markers: open %s: %w", p, err)
		return openErr
	}
	fd, path = f, p
	pid = strconv.AppendInt(nil, int64(os.Getpid()), 10)
	return nil
}

// Enable finds tracefs, opens its trace_marker (once per process) and turns
// markers on. On error markers stay off.
func Enable() error {
	p, err := Find()
	if err != nil {
		return fmt.Errorf("trace markers: %w", err)
	}
	if err := Open(p); err != nil {
		return err
	}
	on.Store(true)
	return nil
}

// Disable turns markers off; the file stays open for a later Enable.
func Disable() { on.Store(false) }

// On reports whether markers are on in this process.
func On() bool { return on.Load() }

// Path is the open trace_marker file while markers are on, else "".
func Path() string {
	if !on.Load() {
		return ""
	}
	return path
}

// Begin, End, AsyncBegin, AsyncEnd and Counter write one marker each when
// the file is open (callers check On or their own per-run flag first).

// Begin starts a slice on the calling thread; End, on the same thread, ends it.
func Begin(name string) { emit('B', name, false, 0) }

// End ends the calling thread's innermost slice.
func End() { emit('E', "", false, 0) }

// AsyncBegin starts a slice that AsyncEnd with the same name and cookie ends,
// from any thread.
func AsyncBegin(name string, cookie uint64) { emit('S', name, true, int64(cookie)) }

// AsyncEnd ends the slice AsyncBegin started.
func AsyncEnd(name string, cookie uint64) { emit('F', name, true, int64(cookie)) }

// Counter sets the process's counter name to v.
func Counter(name string, v int64) { emit('C', name, true, v) }

func emit(kind byte, name string, withNum bool, num int64) {
	if fd < 0 {
		return
	}
	var a [128]byte
	b := append(a[:0], kind, '|')
	b = append(b, pid...)
	if kind != 'E' {
		b = append(b, '|')
		b = AppendName(b, name)
	}
	if withNum {
		b = append(b, '|')
		b = strconv.AppendInt(b, num, 10)
	}
	// One write(2): the kernel stores it as one event, never interleaved
	// with another thread's marker. A full buffer or a stopped trace is not
	// the stage's problem, so errors are dropped.
	_, _ = unix.Write(fd, b)
}

// AppendName appends name with '|' and line breaks replaced by '_' (they
// would split the marker's fields or lines), cut to 512 bytes.
func AppendName(b []byte, name string) []byte {
	if len(name) > maxName {
		name = name[:maxName]
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '|' || c == '\n' || c == '\r' {
			c = '_'
		}
		b = append(b, c)
	}
	return b
}
