package plan

import (
	"reflect"
	"strings"
	"testing"
)

func TestRemoteSelection(t *testing.T) {
	p, err := build(t, `
[remote]
executor = "grpc://farm:8980"
kinds = ["dummy.scale"]
platform = { OSFamily = "linux", pool = "cpu" }

[stages.src]
kind = "dummy.source"
remote = true
platform = { pool = "big" }

[stages.a]
kind = "dummy.scale"
inputs = { in = "src.out" }

[stages.b]
kind = "dummy.scale"
inputs = { in = "a.out" }
remote = false

[stages.sink]
kind = "dummy.sink"
inputs = { in = "b.out" }
`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{
		"src": {"OSFamily": "linux", "pool": "big"},
		"a":   {"OSFamily": "linux", "pool": "cpu"},
	}
	for _, n := range p.Nodes {
		w, remote := want[n.Name]
		if n.Remote != remote || (remote && !reflect.DeepEqual(n.Platform, w)) {
			t.Errorf("stage %s: remote %v platform %v, want remote %v platform %v", n.Name, n.Remote, n.Platform, remote, w)
		}
	}
	if rs := p.RemoteStages(); len(rs) != 2 || rs[0].Name != "src" || rs[1].Name != "a" {
		t.Errorf("RemoteStages: %v", rs)
	}
	if pos, key := p.RemotePos(p.Node("a")); key != "remote.kinds" || pos.Line != 8 {
		t.Errorf("RemotePos(a) = %v %s, want line 8 remote.kinds", pos, key)
	}
	if pos, key := p.RemotePos(p.Node("src")); key != "stages.src.remote" || pos.Line != 13 {
		t.Errorf("RemotePos(src) = %v %s, want line 13 stages.src.remote", pos, key)
	}
}

func TestRemoteRejects(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{"[remote]\nkinds = [\"dummy.scal\"]\n[stages.a]\nkind = \"dummy.source\"\n",
			`p.toml:6:10: remote.kinds: unknown stage kind "dummy.scal" (did you mean "dummy.scale"?)`},
		{"[stages.a]\nkind = \"dummy.source\"\nplatform = { pool = \"x\" }\n",
			`p.toml:7:12: stages.a.platform: stage a runs locally: a platform applies only to remote stages`},
	} {
		_, err := build(t, c.body)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
}
