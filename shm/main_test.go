package shm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// helperEnv selects a helper mode when the test binary is re-executed as a
// child process.
const helperEnv = "PIPEHOST_SHM_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

func runHelper(mode string) int {
	switch mode {
	case "write-sealed":
		// fd 3 is a sealed segment: map it read-only and write into it.
		seg, err := Open(ChildFD)
		if err != nil {
			fmt.Fprintln(os.Stderr, "open:", err)
			return 10
		}
		m, err := seg.MapRO()
		if err != nil {
			fmt.Fprintln(os.Stderr, "map:", err)
			return 11
		}
		b := m.Bytes()
		fmt.Println("mapped")
		os.Stdout.Sync()
		b[len(b)/2] ^= 0xff // must fault
		fmt.Println("wrote")
		return 0
	case "channel-eof":
		// Take one segment from the host, report its checksum, then wait for
		// the channel to end.
		ch, err := ChannelFromEnv()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 10
		}
		if _, ok := os.LookupEnv(EnvFDChannel); ok {
			fmt.Fprintln(os.Stderr, EnvFDChannel, "still set")
			return 12
		}
		mb := NewMailbox(ch)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		msg, fd, err := mb.Take(ctx, 7)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 13
		}
		seg, err := Open(fd)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 14
		}
		m, err := seg.MapRO()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 15
		}
		var sum uint64
		for _, v := range m.Bytes() {
			sum += uint64(v)
		}
		fmt.Printf("segment %d size %d sum %d\n", msg.SegmentID, seg.Size(), sum)
		os.Stdout.Sync()
		m.Unmap()
		seg.Close()
		select {
		case <-mb.Done():
		case <-time.After(20 * time.Second):
			fmt.Fprintln(os.Stderr, "no EOF")
			return 16
		}
		fmt.Println("done:", mb.Err())
		if !errors.Is(mb.Err(), ErrPeerGone) {
			return 17
		}
		return 0
	case "adopt":
		// Create a dynamic output, fill it, hand it to the host, close cleanly.
		ch, err := ChannelFromEnv()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 10
		}
		seg, err := Create("dynamic-output", 3000)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 11
		}
		m, err := seg.MapRW()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 12
		}
		copy(m.Bytes(), bytes.Repeat([]byte("adopted!"), 375))
		m.Unmap()
		tok := PluginTokens().Next()
		if err := ch.Send(Message{Type: MsgAdopt, Token: tok, Size: uint64(seg.Size())}, seg.FD()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 13
		}
		seg.Close()
		if err := ch.Send(Message{Type: MsgClose}, -1); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 14
		}
		fmt.Printf("token %d\n", tok)
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 99
}

// helperCmd re-executes the test binary in a helper mode.
func helperCmd(t *testing.T, mode string, extra ...*os.File) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.ExtraFiles = extra
	return cmd
}

// waitTimeout waits for cmd, killing it if it hangs (a safety net, not an
// assertion on speed).
func waitTimeout(t *testing.T, cmd *exec.Cmd, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		t.Fatalf("helper %v did not exit within %v", cmd.Args, d)
		return nil
	}
}

// openFDs lists this process's open descriptors with their targets.
func openFDs(t *testing.T) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(ents))
	for _, e := range ents {
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // closed while listing: not held
		}
		out[e.Name()] = link
	}
	return out
}

// checkNoLeak fails if fds opened after before are still open (ignoring the
// ReadDir fd itself, which is closed again).
func checkNoLeak(t *testing.T, before map[string]string) {
	t.Helper()
	after := openFDs(t)
	var leaked []string
	for fd, link := range after {
		if prev, ok := before[fd]; !ok || prev != link {
			if strings.HasPrefix(link, "/proc/") {
				continue
			}
			leaked = append(leaked, fd+" -> "+link)
		}
	}
	if len(leaked) > 0 {
		t.Errorf("leaked fds: %v", leaked)
	}
}
