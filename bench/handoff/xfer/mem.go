package xfer

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
)

// Memory is a process's resident set as /proc/PID/status reports it, in
// bytes.
type Memory struct {
	Peak  uint64 // VmHWM: the high-water mark since the last ResetPeak
	RSS   uint64 // VmRSS
	Anon  uint64 // RssAnon: private memory, e.g. Go slices
	Shmem uint64 // RssShmem: mapped shared memory, e.g. memfd segments
}

// ResetPeak sets the process's VmHWM back to its current RSS (clear_refs
// = 5), so a later Peak covers only what happens in between.
func ResetPeak() error {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// ReadMemory reads the calling process's memory figures; zero fields when
// /proc is unavailable.
func ReadMemory() Memory {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return Memory{}
	}
	var m Memory
	fields := map[string]*uint64{"VmHWM:": &m.Peak, "VmRSS:": &m.RSS, "RssAnon:": &m.Anon, "RssShmem:": &m.Shmem}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		if dst, ok := fields[f[0]]; ok {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			*dst = kb * 1024
		}
	}
	return m
}
