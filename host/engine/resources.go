package engine

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/pipehost/pipehost/host/plan"
)

// resources are named capacities (e.g. "gpu": 2) that stages declare they
// hold while running; each has its own queue so such stages never
// oversubscribe it.
type resources struct {
	mu    sync.Mutex
	free  map[string]int
	total map[string]int
	wake  chan struct{}
}

func newResources(capacity map[string]int) *resources {
	r := &resources{free: map[string]int{}, total: map[string]int{}, wake: make(chan struct{})}
	for k, v := range capacity {
		r.free[k], r.total[k] = v, v
	}
	return r
}

// needs lists what stage n holds while it runs.
func needs(n *plan.Node) map[string]int {
	m := map[string]int{}
	for _, rr := range n.Desc.GetCapabilities().GetResources() {
		if rr.GetCount() > 0 {
			m[rr.GetName()] += int(rr.GetCount())
		}
	}
	return m
}

// Check reports stages that can never run because they need more of a
// resource than exists: a plan error, found before anything starts.
func CheckResources(p *plan.Plan, capacity map[string]int) error {
	var problems []string
	for _, n := range p.Nodes {
		want := needs(n)
		names := make([]string, 0, len(want))
		for k := range want {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if want[k] > capacity[k] {
				flag := "--resource " + k + "=N"
				if k == "gpu" {
					flag = "--gpus N"
				}
				problems = append(problems, fmt.Sprintf("stage %s (%s) needs %d %s but %d are available (set %s)", n.Name, n.Kind, want[k], k, capacity[k], flag))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "\n"))
	}
	return nil
}

// acquire waits until everything in want is free and takes it.
func (r *resources) acquire(ctx context.Context, want map[string]int) (func(), error) {
	if len(want) == 0 {
		return func() {}, nil
	}
	for {
		r.mu.Lock()
		ok := true
		for k, v := range want {
			if r.free[k] < v {
				ok = false
			}
		}
		if ok {
			for k, v := range want {
				r.free[k] -= v
			}
			r.mu.Unlock()
			return func() { r.release(want) }, nil
		}
		wake := r.wake
		r.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

func (r *resources) release(want map[string]int) {
	r.mu.Lock()
	for k, v := range want {
		r.free[k] += v
	}
	close(r.wake)
	r.wake = make(chan struct{})
	r.mu.Unlock()
}
