package config

import (
	"reflect"
	"strings"
	"testing"
)

func TestRemoteTable(t *testing.T) {
	for _, c := range []struct{ file, body string }{
		{"r.toml", `
[remote]
cache = "grpc://cache:9092"
executor = "grpc://farm:8980"
kinds = ["terrain.erode", "hydro.flow"]
fallback = "local"
platform = { OSFamily = "linux", cores = 8 }
[stages.e]
kind = "terrain.erode"
remote = false
platform = { pool = "big" }
`},
		{"r.yaml", `
remote:
  cache: grpc://cache:9092
  executor: grpc://farm:8980
  kinds: [terrain.erode, hydro.flow]
  fallback: local
  platform: {OSFamily: linux, cores: 8}
stages:
  e:
    kind: terrain.erode
    remote: false
    platform: {pool: big}
`},
	} {
		p, err := Parse(c.file, []byte(c.body))
		if err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		r := p.Remote
		if r.Cache != "grpc://cache:9092" || r.Executor != "grpc://farm:8980" || r.Fallback != FallbackLocal ||
			!reflect.DeepEqual(r.Kinds, []string{"terrain.erode", "hydro.flow"}) || len(r.KindsPos) != 2 ||
			!reflect.DeepEqual(r.Platform, map[string]string{"OSFamily": "linux", "cores": "8"}) {
			t.Errorf("%s: remote decoded as %+v", c.file, r)
		}
		s := p.Stage("e")
		if s.Remote == nil || *s.Remote || !reflect.DeepEqual(s.Platform, map[string]string{"pool": "big"}) || s.RemotePos.Line == 0 {
			t.Errorf("%s: stage e decoded as remote %v platform %v", c.file, s.Remote, s.Platform)
		}
	}
}

func TestRemoteErrors(t *testing.T) {
	stage := "[stages.a]\nkind = \"k\"\n"
	for _, c := range []struct{ body, want string }{
		{"[remote]\nfallback = \"retry\"\n" + stage, `f.toml:2:12: remote.fallback: "retry" is not a fallback policy (use "error" or "local")`},
		{"[remote]\nkinds = \"terrain.erode\"\n" + stage, `f.toml:2:9: remote.kinds: expected a list of stage kinds`},
		{"[remote]\nkinds = [\"a\", 3]\n" + stage, `f.toml:2:15: remote.kinds[1]: expected a string`},
		{"[remote]\nworkers = 3\n" + stage, `f.toml:2:1: remote.workers: unknown key`},
		{"[remote.platform]\npool = [\"a\"]\n" + stage, `f.toml:2:1: remote.platform.pool: expected a string, got a list`},
		{stage + "remote = \"yes\"\n", `f.toml:3:10: stages.a.remote: expected true or false`},
		{stage + "platform = \"big\"\n", `f.toml:3:12: stages.a.platform: expected a table`},
	} {
		_, err := Parse("f.toml", []byte(c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.body, err, c.want)
		}
	}
}
