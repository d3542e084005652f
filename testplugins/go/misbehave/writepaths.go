package main

// Stages that leave a way to write into their output after returning, one
// per write path the host's F_SEAL_WRITE must catch (docs/protocol.md,
// "Hand-off"): a view mprotected read-only (and made writable again after
// the Result), and a helper process holding a writable mapping, given the
// memfd either at exec (inherited) or over a unix socket (SCM_RIGHTS). Each
// appends what it did to the file named by its note param, so a test knows
// the misbehaviour really happened.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/sdk"
)

type writePathParams struct {
	Note    string `param:"note" default:"" doc:"file to append progress lines to"`
	Rewrite bool   `param:"rewrite" default:"false" doc:"make the view writable again and write after returning"`
	Pass    string `param:"pass" default:"inherit" doc:"how the helper gets the memfd: inherit or socket"`
}

const (
	// helperArg as the first argument makes this binary a helper process
	// rather than a plugin.
	helperArg = "write-path-helper"
	// lateWrite is how long after the stage returned the late writes come:
	// by then the host has the Result.
	lateWrite = 20 * time.Millisecond
	// helperLife bounds a helper's life whatever happens to the plugin.
	helperLife = 10 * time.Second
	// marker is what late writes put into the output's first cell.
	marker = float32(-7)
)

// note appends one line to path (O_APPEND keeps lines of both processes
// whole).
func note(path, format string, args ...any) {
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "note:", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, format+"\n", args...)
}

// openOutput reopens, read-write, the memfd named name among this process's
// descriptors (the SDK holds it; pre-allocated outputs are named
// "<stage>.<port>").
func openOutput(name string) (*os.File, error) {
	fds, _ := filepath.Glob("/proc/self/fd/*")
	for _, p := range fds {
		link, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(link, "/memfd:"+name+" ") {
			continue
		}
		return os.OpenFile(p, os.O_RDWR, 0)
	}
	return nil, fmt.Errorf("no memfd named %q among my fds", name)
}

func mapShared(fd int) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	return unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
}

func setMarker(b []byte) { *(*float32)(unsafe.Pointer(&b[0])) = marker }

// mprotectStage maps its output itself, fills it, makes the view read-only
// and keeps it. With rewrite it makes the view writable again after
// returning and writes the marker: without F_SEAL_WRITE nothing stops it.
func mprotectStage(c *sdk.Context, p writePathParams) error {
	f, err := openOutput(c.Stage() + ".out")
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := mapShared(int(f.Fd()))
	if err != nil {
		return err
	}
	cells := unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4)
	for i := range cells {
		cells[i] = 1
	}
	if err := unix.Mprotect(b, unix.PROT_READ); err != nil {
		return err
	}
	note(p.Note, "protected %d bytes read-only", len(b))
	if !p.Rewrite {
		return nil
	}
	returned := make(chan struct{})
	defer close(returned)
	go func() {
		<-returned
		time.Sleep(lateWrite)
		if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE); err != nil {
			note(p.Note, "mprotect back to writable: %v", err)
			return
		}
		setMarker(b)
		note(p.Note, "wrote after the stage returned")
	}()
	return nil
}

// lifelines keeps the plugin's end of each helper's control socket open for
// as long as the plugin lives: the helper sees EOF when the plugin is gone.
var lifelines struct {
	sync.Mutex
	files []*os.File
}

// helperStage fills its output through the SDK (which unmaps its view
// before the Result, as it should) but first starts a helper process that
// maps the same memfd writable, keeps it, and writes the marker a little
// after the stage returned.
func helperStage(c *sdk.Context, p writePathParams) error {
	g, err := sdk.OutputGrid[float32](c, "out")
	if err != nil {
		return err
	}
	for i := range g.Data {
		g.Data[i] = 1
	}
	mem, err := openOutput(c.Stage() + ".out")
	if err != nil {
		return err
	}
	defer mem.Close()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	ours, theirs := os.NewFile(uintptr(sp[0]), "helper control"), os.NewFile(uintptr(sp[1]), "helper control")
	defer theirs.Close()
	cmd := exec.Command("/proc/self/exe", helperArg, p.Pass, p.Note)
	cmd.ExtraFiles = []*os.File{theirs}
	switch p.Pass {
	case "inherit":
		cmd.ExtraFiles = append(cmd.ExtraFiles, mem)
	case "socket":
	default:
		ours.Close()
		return fmt.Errorf("param pass: %q is neither inherit nor socket", p.Pass)
	}
	// The helper dies with the plugin (and, failing that, by itself).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		ours.Close()
		return err
	}
	go cmd.Wait() // reap it whenever it ends
	lifelines.Lock()
	lifelines.files = append(lifelines.files, ours)
	lifelines.Unlock()
	if p.Pass == "socket" {
		if err := unix.Sendmsg(sp[0], []byte("f"), unix.UnixRights(int(mem.Fd())), nil, 0); err != nil {
			return fmt.Errorf("passing the memfd to the helper: %w", err)
		}
	}
	if err := await(sp[0], 'r', 5*time.Second); err != nil {
		return fmt.Errorf("helper: %w", err)
	}
	// Tell the helper we are returning now.
	_, err = unix.Write(sp[0], []byte("g"))
	return err
}

// await reads one byte from fd, which must be want, within d.
func await(fd int, want byte, d time.Duration) error {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, int(d/time.Millisecond))
	for errors.Is(err, unix.EINTR) {
		n, err = unix.Poll(pfd, int(d/time.Millisecond))
	}
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("no %q within %v", want, d)
	}
	var b [1]byte
	if n, err := unix.Read(fd, b[:]); err != nil || n != 1 || b[0] != want {
		return fmt.Errorf("want %q, read %q (%v)", want, b[:max(n, 0)], err)
	}
	return nil
}

// runHelper is the helper process: fd 3 is its control socket; the memfd is
// fd 4 (pass=inherit) or arrives on the socket (pass=socket).
func runHelper(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "helper: want pass and note")
		return 2
	}
	pass, notePath := args[0], args[1]
	time.AfterFunc(helperLife, func() { os.Exit(0) })
	const ctl = 3
	mem := 4
	if pass == "socket" {
		buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := unix.Recvmsg(ctl, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper: recvmsg:", err)
			return 3
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			fmt.Fprintln(os.Stderr, "helper: no fd received:", err)
			return 3
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			fmt.Fprintln(os.Stderr, "helper: no fd received:", err)
			return 3
		}
		mem = fds[0]
	}
	b, err := mapShared(mem)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: mmap:", err)
		return 4
	}
	unix.Close(mem)
	note(notePath, "helper %d mapped %d bytes writable (%s)", os.Getpid(), len(b), pass)
	if _, err := unix.Write(ctl, []byte("r")); err != nil {
		return 5
	}
	if err := await(ctl, 'g', helperLife); err != nil {
		return 6
	}
	time.Sleep(lateWrite)
	setMarker(b)
	note(notePath, "helper %d wrote after the stage returned", os.Getpid())
	// Hold the mapping until the plugin is gone: then the socket reads EOF.
	var one [1]byte
	for {
		n, err := unix.Read(ctl, one[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 {
			return 0
		}
	}
}

// helperMode runs the helper when this binary was started as one.
func helperMode() {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		os.Exit(runHelper(os.Args[2:]))
	}
}
