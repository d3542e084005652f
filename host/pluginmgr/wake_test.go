package pluginmgr

import (
	"testing"

	"github.com/pipehost/pipehost/shm"
)

// A run's waiter is woken when the reader runs dry, or after wakeAfter
// messages however busy the channel is: events of a plugin that sends
// without pause are taken as they come instead of piling up.
func TestRunsWakeWhenTheReaderRunsDryOrAfterABurst(t *testing.T) {
	p := &Plugin{}
	r := &ChannelRun{p: p, token: 7, wake: make(chan struct{}, 1)}
	p.chanRuns.runs = map[uint64]*ChannelRun{7: r}
	woken := func() bool {
		select {
		case <-r.wake:
			return true
		default:
			return false
		}
	}
	event := shm.Message{Type: shm.MsgEvent, Token: 7}
	for i := 1; i < wakeAfter; i++ {
		if err := p.route(event, []byte{}); err != nil {
			t.Fatal(err)
		}
	}
	if woken() {
		t.Fatalf("woken after %d messages, before the reader ran dry", wakeAfter-1)
	}
	if err := p.route(event, []byte{}); err != nil {
		t.Fatal(err)
	}
	if !woken() {
		t.Fatalf("not woken after %d messages in a row", wakeAfter)
	}
	if err := p.route(event, []byte{}); err != nil {
		t.Fatal(err)
	}
	if woken() {
		t.Fatal("woken for one message before the reader ran dry")
	}
	p.wakeRuns() // the reader ran dry
	if !woken() {
		t.Fatal("not woken when the reader ran dry")
	}
	r.mu.Lock()
	queued := len(r.queue)
	r.mu.Unlock()
	if queued != wakeAfter+1 {
		t.Errorf("%d events queued, want %d", queued, wakeAfter+1)
	}
}
