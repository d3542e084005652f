package engine

import (
	"context"
	"testing"

	"github.com/pipehost/pipehost/host/cache"
)

// A digest that is known is returned even to a caller whose context has
// ended: a consumer's run that finished first must not cost the entry a
// recomputed stage stores with it.
func TestWaitDigestPrefersAKnownDigest(t *testing.T) {
	o := &Output{digested: make(chan struct{}), Digest: cache.Digest{Hash: "abc", Size: 3}}
	close(o.digested)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 1000; i++ {
		d, err := o.waitDigest(ctx)
		if err != nil || d.Hash != "abc" {
			t.Fatalf("try %d: %v, %v; want the known digest", i, d, err)
		}
	}
	pending := &Output{digested: make(chan struct{})}
	if _, err := pending.waitDigest(ctx); err == nil {
		t.Fatal("a digest not known yet, with the context ended: no error")
	}
}
