package main

// testdata/fdchannel-runs.json: datagrams sent on a real fd channel → what a
// receiver that takes runs on the channel (shm.Channel.RecvPayload) makes of
// them: one whole RUN, EVENT, END or CANCEL, or the first check that fails.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/shm"
)

var runReasons = [][2]string{
	{"long", "a datagram longer than 32 + 32768 bytes; message contains \"longer than 32800 bytes\""},
	{"short", "fewer than 32 bytes"},
	{"unknown_type", "type is not 1 to 7"},
	{"run_token", "a RUN, EVENT, END or CANCEL token outside 1 ≤ token < 2^63"},
	{"cancel_fields", "a CANCEL whose length or frame size is not 0"},
	{"payload_too_big", "a payload length over 64 MiB"},
	{"frame_size", "a frame over 32768 bytes, or over the bytes still missing of its payload"},
	{"empty_frame", "a frame of 0 bytes in a payload that is not empty"},
	{"length", "a datagram that is not 32 + the frame size its header gives"},
	{"interleaved", "another message, or a frame of another type, token or length, before a payload is whole"},
	{"truncated", "the channel ends before a payload is whole"},
	{"fd_count", "any fd on a RUN, EVENT, END or CANCEL"},
}

// runPhrases are the Go messages of each reason.
var runPhrases = map[string][]string{
	"long": {"longer than 32800 bytes"}, "short": {"bytes, want 32"}, "unknown_type": {"unknown message type"},
	"run_token": {"is not a run token"}, "cancel_fields": {"CANCEL carries no payload"},
	"payload_too_big": {"at most 67108864"}, "frame_size": {"frames hold at most", "add up to more than"},
	"empty_frame": {"frame in a payload of"}, "length": {"its header says"},
	"interleaved": {"came inside a"}, "truncated": {"ended inside a"}, "fd_count": {"fds, want 0"},
}

// datagram is one sendmsg: data, then fill bytes of 0xa5, with fds.
type datagram struct {
	Data string `json:"data"`
	Fill int    `json:"fill,omitempty"`
	FDs  int    `json:"fds,omitempty"`
}

type runCase struct {
	Name      string            `json:"name"`
	Datagrams []datagram        `json:"datagrams"`
	Close     bool              `json:"close,omitempty"`
	Outcome   string            `json:"outcome"`
	Message   map[string]string `json:"message,omitempty"`
	Reason    string            `json:"reason,omitempty"`
}

func (d datagram) bytes() []byte {
	b, _ := hex.DecodeString(d.Data)
	for range d.Fill {
		b = append(b, 0xa5)
	}
	return b
}

func runCases() []runCase {
	const top = shm.PluginTokenBit
	const frame, most = shm.MaxFrame, shm.MaxPayload
	h := func(typ uint16, token, total, size uint64) string {
		return hex.EncodeToString(hdr(typ, token, total, size))
	}
	dg := func(typ uint16, token, total, size uint64, fill int) datagram {
		return datagram{Data: h(typ, token, total, size), Fill: fill}
	}
	var cs []runCase
	add := func(name string, close bool, ds ...datagram) {
		cs = append(cs, runCase{Name: name, Datagrams: ds, Close: close})
	}
	add("RUN, empty payload", false, dg(4, 1, 0, 0, 0))
	add("RUN, 5 bytes", false, datagram{Data: h(4, 1, 5, 5) + "0a03616263"})
	add("EVENT with the largest run token", false, dg(5, top-1, 3, 3, 3))
	add("END, one whole frame", false, dg(6, 9, frame, frame, frame))
	add("EVENT in two frames", false, dg(5, 7, frame+1, frame, frame), dg(5, 7, frame+1, 1, 1))
	add("EVENT in three frames", false, dg(5, 7, 2*frame+10, frame, frame), dg(5, 7, 2*frame+10, frame, frame), dg(5, 7, 2*frame+10, 10, 10))
	add("CANCEL", false, dg(7, 12, 0, 0, 0))

	add("longer than a frame", false, dg(5, 1, frame+1, frame+1, frame+1))
	add("20 bytes", false, datagram{Data: h(4, 1, 0, 0)[:40]})
	add("type 8", false, dg(8, 1, 0, 0, 0))
	add("RUN with a plugin token", false, dg(4, top|1, 0, 0, 0))
	add("EVENT token 0", false, dg(5, 0, 1, 1, 1))
	add("CANCEL with a length", false, dg(7, 1, 1, 0, 0))
	add("CANCEL with a frame size", false, dg(7, 1, 0, 1, 0))
	add("payload over 64 MiB", false, dg(5, 1, most+1, 1, 1))
	add("frame size over 32768 (the datagram is short)", false, dg(5, 1, 2*frame, frame+1, 8))
	add("first frame over its payload", false, dg(4, 1, 4, 5, 5))
	add("later frame over what is missing", false, dg(5, 1, 20, 10, 10), dg(5, 1, 20, 11, 11))
	add("empty frame of a 10-byte payload", false, dg(4, 1, 10, 0, 0))
	add("datagram shorter than its frame", false, dg(4, 1, 10, 10, 4))
	add("datagram longer than its frame", false, dg(4, 1, 10, 4, 10))
	add("frame of another token", false, dg(5, 1, 20, 10, 10), dg(5, 2, 20, 10, 10))
	add("frame of another type", false, dg(5, 1, 20, 10, 10), dg(6, 1, 20, 10, 10))
	add("frame of another length", false, dg(5, 1, 20, 10, 10), dg(5, 1, 21, 10, 10))
	add("CLOSE inside a payload", false, dg(5, 1, 20, 10, 10), dg(3, 0, 0, 0, 0))
	add("end of the channel inside a payload", true, dg(5, 1, 20, 10, 10))
	rf := dg(4, 1, 3, 3, 3)
	rf.FDs = 1
	add("RUN with an fd", false, rf)
	cf := dg(7, 1, 0, 0, 0)
	cf.FDs = 1
	add("CANCEL with an fd", false, cf)
	return cs
}

func runReason(err error) (string, error) {
	msg := err.Error()
	if !errors.Is(err, shm.ErrProtocol) {
		return "", fmt.Errorf("not a protocol violation: %q", msg)
	}
	var found []string
	for _, r := range runReasons {
		for _, p := range runPhrases[r[0]] {
			if strings.Contains(msg, p) {
				found = append(found, r[0])
				break
			}
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("cannot classify %q", msg)
	}
	return found[0], nil
}

// receiveRun sends c's datagrams on a fresh channel pair and reports what
// shm.Channel.RecvPayload makes of them.
func receiveRun(c runCase) (runCase, error) {
	local, remote, err := shm.NewChannelPair()
	if err != nil {
		return c, err
	}
	defer local.Close()
	defer func() {
		if remote != nil {
			remote.Close()
		}
	}()
	for _, d := range c.Datagrams {
		if err := sendWithFDs(int(remote.Fd()), d.bytes(), d.FDs); err != nil {
			return c, err
		}
	}
	if c.Close {
		remote.Close()
		remote = nil
	}
	m, payload, fd, err := local.RecvPayload()
	switch {
	case errors.Is(err, io.EOF):
		return c, errors.New("unexpected EOF")
	case err != nil:
		c.Outcome = "reject"
		if c.Reason, err = runReason(err); err != nil {
			return c, err
		}
	default:
		if fd >= 0 {
			unix.Close(fd)
		}
		sum := sha256.Sum256(payload)
		c.Outcome = "message"
		c.Message = map[string]string{"type": strconv.Itoa(int(m.Type)), "token": u64s(m.Token),
			"length": strconv.Itoa(len(payload)), "sha256": hex.EncodeToString(sum[:])}
	}
	return c, nil
}

func buildFDChannelRuns() ([]byte, error) {
	f := newFile("pipehost.fdchannel-runs/1",
		"runs on the fd channel: the datagrams sent on a SOCK_SEQPACKET socket pair, and what a receiver that takes runs makes of them (one whole message, or the first failing check); generated by go run ./sdk/internal/genvectors from shm.Channel.RecvPayload.",
		"docs/protocol.md#runs-on-the-fd-channel",
		"each datagram is one sendmsg of the bytes of data (hex) followed by fill bytes of 0xa5, with fds descriptors in one SCM_RIGHTS control message; with close set the sender closes its end after the last. outcome is message (type in decimal, token as 0x and 16 lowercase hex digits, the payload's length in bytes and its SHA-256 in hex) or reject with the reason class of the failing check. Each case has one failing check at most, so any order of checks gives its outcome. After a reject every fd that came is closed.")
	f.table("reasons", runReasons)
	warm := runCase{Name: "warm-up", Datagrams: []datagram{{Data: hex.EncodeToString(hdr(7, 1, 0, 0))}}}
	cs, err := receiveAll(runCases(), warm, receiveRun, func(c runCase) string { return c.Reason },
		func(c runCase) string { return c.Name }, runReasons)
	if err != nil {
		return nil, fmt.Errorf("fd channel runs: %w", err)
	}
	f.cases("cases", cs)
	return f.bytes(), nil
}
