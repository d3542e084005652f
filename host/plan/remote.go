package plan

import (
	"maps"

	"github.com/pipehost/pipehost/host/config"
)

// remote chooses the stages that run on the remote executor: those whose
// kind remote.kinds lists, unless the stage says remote = false, and those
// that say remote = true. Their platform is remote.platform with the
// stage's own platform table laid over it.
func (b *builder) remote(p *Plan) {
	rc := b.cfg.Remote
	kinds := map[string]bool{}
	for i, k := range rc.Kinds {
		if _, ok := b.reg.Lookup(k); !ok {
			b.errorf(rc.KindsPos[i], "remote.kinds", "unknown stage kind %q%s", k, suggest(k, b.reg.Kinds()))
			continue
		}
		kinds[k] = true
	}
	for _, sc := range b.cfg.Stages {
		n := p.byName[sc.Name]
		if n == nil || n.Config != sc {
			continue // defined twice: already reported
		}
		n.Remote = kinds[sc.Kind]
		if sc.Remote != nil {
			n.Remote = *sc.Remote
		}
		if sc.Platform != nil && !n.Remote {
			b.errorf(sc.PlatformPos, "stages."+sc.Name+".platform", "stage %s runs locally: a platform applies only to remote stages (set remote = true or list %q in remote.kinds)", sc.Name, sc.Kind)
		}
		if !n.Remote {
			continue
		}
		n.Platform = maps.Clone(rc.Platform)
		if n.Platform == nil {
			n.Platform = map[string]string{}
		}
		maps.Copy(n.Platform, sc.Platform)
	}
}

// RemoteStages lists the stages that run on the remote executor, in plan
// order.
func (p *Plan) RemoteStages() []*Node {
	var ns []*Node
	for _, n := range p.Nodes {
		if n.Remote {
			ns = append(ns, n)
		}
	}
	return ns
}

// RemotePos is where the config chose a stage for remote execution (its
// remote key, else the remote.kinds entry naming its kind).
func (p *Plan) RemotePos(n *Node) (config.Pos, string) {
	if n.Config.Remote != nil {
		return n.Config.RemotePos, "stages." + n.Name + ".remote"
	}
	for i, k := range p.Config.Remote.Kinds {
		if k == n.Kind {
			return p.Config.Remote.KindsPos[i], "remote.kinds"
		}
	}
	return n.Config.Pos, "stages." + n.Name
}
