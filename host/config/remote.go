package config

import (
	"fmt"
	"strings"
)

// remote decodes the [remote] table: the shared cache, the executor, which
// stage kinds run there, the fallback policy and the platform properties.
func (d *decoder) remote(p *Pipeline, f *Field) {
	p.Remote.Pos = f.Value.Pos
	n := d.fields(f.Value, "remote", "cache", "executor", "kinds", "fallback", "platform")
	if n == nil {
		return
	}
	if g := n.Get("cache"); g != nil {
		p.Remote.Cache, _ = d.str(g, "remote.cache")
	}
	if g := n.Get("executor"); g != nil {
		p.Remote.Executor, _ = d.str(g, "remote.executor")
		p.Remote.ExecutorPos = g.Value.Pos
	}
	if g := n.Get("kinds"); g != nil {
		if g.Value.Kind != List {
			d.errorf(g.Value.Pos, "remote.kinds", "expected a list of stage kinds, got %s", describe(g.Value))
		} else {
			for i, item := range g.Value.Items {
				key := fmt.Sprintf("remote.kinds[%d]", i)
				if k, ok := d.str(&Field{Key: key, Value: item}, key); ok {
					p.Remote.Kinds = append(p.Remote.Kinds, k)
					p.Remote.KindsPos = append(p.Remote.KindsPos, item.Pos)
				}
			}
		}
	}
	if g := n.Get("fallback"); g != nil {
		if s, ok := d.str(g, "remote.fallback"); ok {
			if s != FallbackError && s != FallbackLocal {
				d.errorf(g.Value.Pos, "remote.fallback", "%q is not a fallback policy (use %q or %q)", s, FallbackError, FallbackLocal)
			}
			p.Remote.Fallback, p.Remote.FallbackPos = s, g.Value.Pos
		}
	}
	if g := n.Get("platform"); g != nil {
		p.Remote.Platform = d.platform(g, "remote.platform")
	}
}

// platform decodes a table of REAPI platform properties. Values are
// strings as the API has them; integers are written out (cores = 8).
func (d *decoder) platform(g *Field, key string) map[string]string {
	if g.Value.Kind != Map {
		d.errorf(g.Value.Pos, key, "expected a table of property = \"value\", got a %s", g.Value.TypeName())
		return nil
	}
	props := map[string]string{}
	for _, f := range g.Value.Fields {
		k := key + "." + f.Key
		if strings.TrimSpace(f.Key) == "" {
			d.errorf(f.KeyPos, k, "a platform property needs a name")
			continue
		}
		if f.Value.Kind != Scalar {
			d.errorf(f.KeyPos, k, "expected a string, got %s", describe(f.Value))
			continue
		}
		switch v := f.Value.Value.(type) {
		case string:
			props[f.Key] = v
		case int64:
			props[f.Key] = fmt.Sprint(v)
		case bool:
			props[f.Key] = fmt.Sprint(v)
		default:
			d.errorf(f.Value.Pos, k, "expected a string, got %s", describe(f.Value))
		}
	}
	return props
}
