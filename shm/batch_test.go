package shm

import (
	"bytes"
	"errors"
	"sync"
	"testing"
)

// A batch arrives as the same records, in order, as one send each: two
// segments with their fds, a RUN whose payload spans several frames, and an
// empty END.
func TestSendBatchArrivesInOrder(t *testing.T) {
	a, b := pair(t)
	s1, s2 := mustCreate(t, "one", 4096), mustCreate(t, "two", 8192)
	fill(t, s1, []byte("11111111"))
	fill(t, s2, []byte("22222222"))
	big := bytes.Repeat([]byte("run!"), (3*MaxFrame+100)/4)
	batch := []Outgoing{
		{Msg: Message{Type: MsgSegment, Token: 1, SegmentID: 7, Size: 4096}, FD: s1.FD()},
		{Msg: Message{Type: MsgSegment, Token: 2, SegmentID: 8, Size: 8192}, FD: s2.FD()},
		{Msg: Message{Type: MsgRun, Token: 3}, FD: -1, Payload: big},
		{Msg: Message{Type: MsgEnd, Token: 3}, FD: -1, Payload: []byte{}},
	}
	if err := a.SendBatch(batch); err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		seg  *Segment
		body []byte
	}{{s1, []byte("11111111")}, {s2, []byte("22222222")}} {
		m, payload, fd, err := b.RecvPayload()
		if err != nil {
			t.Fatal(err)
		}
		if m != batch[i].Msg || payload != nil || fd < 0 {
			t.Fatalf("record %d: %+v payload %d bytes fd %d", i, m, len(payload), fd)
		}
		r, err := Open(fd)
		if err != nil {
			t.Fatal(err)
		}
		mp, err := r.MapRO()
		if err != nil {
			// Not sealed: map it the way an output is.
			mp, err = r.MapRW()
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mp.Bytes()[:8], want.body) || r.Size() != want.seg.Size() {
			t.Errorf("record %d: another segment came with it", i)
		}
		mp.Unmap()
		r.Close()
	}
	m, payload, fd, err := b.RecvPayload()
	if err != nil || m.Type != MsgRun || m.Token != 3 || fd != -1 || !bytes.Equal(payload, big) {
		t.Fatalf("RUN: %+v, %d bytes, fd %d, %v", m, len(payload), fd, err)
	}
	m, payload, _, err = b.RecvPayload()
	if err != nil || m.Type != MsgEnd || m.Token != 3 || len(payload) != 0 {
		t.Fatalf("END: %+v, %d bytes, %v", m, len(payload), err)
	}
}

// A batch with one message no peer would accept sends nothing at all.
func TestSendBatchChecksEveryMessageFirst(t *testing.T) {
	a, b := pair(t)
	s := mustCreate(t, "s", 4096)
	for name, bad := range map[string]Outgoing{
		"segment without fd": {Msg: Message{Type: MsgSegment, Token: 5, Size: 4096}, FD: -1},
		"close with an fd":   {Msg: Message{Type: MsgClose}, FD: s.FD()},
		"run with an fd":     {Msg: Message{Type: MsgRun, Token: 6}, FD: s.FD(), Payload: []byte("x")},
		"payload too big":    {Msg: Message{Type: MsgEvent, Token: 6}, FD: -1, Payload: make([]byte, MaxPayload+1)},
		"plugin token":       {Msg: Message{Type: MsgSegment, Token: PluginTokenBit | 1, Size: 4096}, FD: s.FD()},
	} {
		batch := []Outgoing{{Msg: Message{Type: MsgSegment, Token: 4, Size: 4096}, FD: s.FD()}, bad}
		if err := a.SendBatch(batch); err == nil {
			t.Errorf("%s: sent", name)
		}
	}
	if err := a.Send(Message{Type: MsgClose}, -1); err != nil {
		t.Fatal(err)
	}
	if m, fd, err := b.Recv(); err != nil || m.Type != MsgClose || fd != -1 {
		t.Fatalf("the first record after the refused batches is %+v (fd %d, %v), want the CLOSE", m, fd, err)
	}
}

// A batch larger than the socket buffer waits for the reader and arrives
// whole; a closed channel refuses one.
func TestSendBatchLargerThanTheSocketBuffer(t *testing.T) {
	a, b := pair(t)
	var batch []Outgoing
	var want [][]byte
	for i := 0; i < 64; i++ {
		p := bytes.Repeat([]byte{byte(i)}, MaxFrame*2)
		batch = append(batch, Outgoing{Msg: Message{Type: MsgEvent, Token: uint64(i + 1)}, FD: -1, Payload: p})
		want = append(want, p)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range want {
			m, p, _, err := b.RecvPayload()
			if err != nil || m.Token != uint64(i+1) || !bytes.Equal(p, want[i]) {
				t.Errorf("record %d: %+v, %d bytes, %v", i, m, len(p), err)
				return
			}
		}
	}()
	if err := a.SendBatch(batch); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	a.Close()
	err := a.SendBatch(batch[:1])
	if !errors.Is(err, ErrClosed) {
		t.Errorf("a batch on a closed channel: %v, want ErrClosed", err)
	}
}
