package plan

import (
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/topology"
)

// grid validates the config's grid and builds the topology and pyramid.
func (b *builder) grid() (*pb.Topology, []*pb.GridInfo) {
	g := b.cfg.Grid
	var edge pb.Wrap
	switch g.Caps {
	case "":
	case "clamp":
		edge = pb.Wrap_WRAP_CLAMP
	case "reflect":
		edge = pb.Wrap_WRAP_REFLECT
	default:
		b.errorf(g.Pos, "grid.caps", "%q is not an edge policy (use \"clamp\" or \"reflect\")", g.Caps)
		return nil, nil
	}
	topo, err := topology.Load(g.Topology, g.Width, g.Height, topology.Options{
		Radius: g.Radius, MinorRadius: g.MinorRadius, Edge: edge,
	})
	if err != nil {
		b.errorf(g.Pos, "grid", "%v", err)
		return nil, nil
	}
	levels, err := topology.GridInfos(g.Topology, g.Width, g.Height, g.Levels-1)
	if err != nil {
		b.errorf(g.Pos, "grid.levels", "%d levels do not fit a %dx%d %s grid: at most %d, counting the native level",
			g.Levels, g.Width, g.Height, g.Topology, topology.MaxLevels(g.Topology, g.Width, g.Height)+1)
		return topo.Proto(), nil
	}
	return topo.Proto(), levels
}
