package pluginmgr

import (
	"fmt"
	"sort"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// Registry maps stage kinds to the plugin that offers them.
type Registry struct {
	kinds map[string]Entry
}

// Entry is one stage kind and its plugin.
type Entry struct {
	Plugin *Plugin
	Desc   *pb.StageDescriptor
}

// NewRegistry indexes the plugins' stages. Two plugins offering one kind is
// an error naming both: which one would run is otherwise a guess.
func NewRegistry(plugins []*Plugin) (*Registry, error) {
	r := &Registry{kinds: map[string]Entry{}}
	for _, p := range plugins {
		for _, d := range p.Stages {
			if prev, dup := r.kinds[d.GetKind()]; dup {
				return nil, fmt.Errorf("stage kind %q is offered by two plugins: %s and %s", d.GetKind(), prev.Plugin.Path, p.Path)
			}
			r.kinds[d.GetKind()] = Entry{Plugin: p, Desc: d}
		}
	}
	return r, nil
}

// Lookup returns the descriptor of kind.
func (r *Registry) Lookup(kind string) (*pb.StageDescriptor, bool) {
	e, ok := r.kinds[kind]
	return e.Desc, ok
}

// Entry returns kind's plugin and descriptor.
func (r *Registry) Entry(kind string) (Entry, bool) {
	e, ok := r.kinds[kind]
	return e, ok
}

// Kinds lists every kind, sorted.
func (r *Registry) Kinds() []string {
	out := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
