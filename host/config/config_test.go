package config

import (
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// strip removes positions so configs from different formats compare equal.
func strip(p *Pipeline) *Pipeline {
	q := *p
	q.File = ""
	q.Grid.Pos = Pos{}
	q.Output.Pos = Pos{}
	q.Stages = nil
	for _, s := range p.Stages {
		c := *s
		c.Pos, c.KindPos = Pos{}, Pos{}
		c.Params = nil
		for _, prm := range s.Params {
			c.Params = append(c.Params, Param{Name: prm.Name, Value: &Node{Kind: prm.Value.Kind, Value: prm.Value.Value}})
		}
		c.Inputs = nil
		for _, in := range s.Inputs {
			in.Pos = Pos{}
			c.Inputs = append(c.Inputs, in)
		}
		q.Stages = append(q.Stages, &c)
	}
	return &q
}

func TestSameConfigInThreeFormats(t *testing.T) {
	var loaded []*Pipeline
	for _, ext := range []string{"toml", "json", "yaml"} {
		p, err := Load(filepath.Join("..", "..", "testdata", "config", "three."+ext))
		if err != nil {
			t.Fatalf("%s: %v", ext, err)
		}
		loaded = append(loaded, strip(p))
	}
	want := loaded[0]
	if want.RunID != "three" || want.Seed != 42 || want.Timeout != 30*time.Second || len(want.Stages) != 3 {
		t.Fatalf("toml decoded wrongly: %+v", want)
	}
	if s := want.Stages[1]; s.Name != "scale" || s.Timeout != 5*time.Second || s.Cache == nil || *s.Cache || s.Inputs[0].Stage != "source" {
		t.Fatalf("stage scale decoded wrongly: %+v", s)
	}
	for i, got := range loaded[1:] {
		if !reflect.DeepEqual(got, want) {
			t.Errorf("format %d differs from TOML:\n got %+v\nwant %+v", i+1, got, want)
		}
	}
}

func TestErrorsNameFileLineAndKey(t *testing.T) {
	cases := []struct {
		file, body string
		want       []string // substrings, e.g. "f.toml:3:8: run.seed"
	}{
		{"f.toml", "[run]\nid = \"x\"\nseed = \"a\"\n", []string{`f.toml:3:8: run.seed: expected an integer, got string "a"`}},
		{"f.toml", "[stages.a]\nkind = \"k\"\ncolour = 3\n", []string{`f.toml:3:1: stages.a.colour: unknown key`}},
		{"f.toml", "[grid]\nwidth = 0\n", []string{`f.toml:2:9: grid.width: 0 is out of range`}},
		{"f.toml", "[stages.a]\nkind = \"k\"\ntimeout = \"soon\"\n", []string{`f.toml:3:11: stages.a.timeout: "soon" is not a positive duration`}},
		{"f.toml", "[stages.a]\nkind = \"k\"\ninputs = { in = \"nodot\" }\n", []string{`f.toml:3:17: stages.a.inputs.in: "nodot" is not a reference`}},
		{"f.toml", "[stages.a]\nkind = \"k\"\n[stages.a]\nkind = \"j\"\n", []string{`f.toml:3:`, `table declared twice`}},
		{"f.toml", "[run]\nseed = \n", []string{`f.toml:2:`, `TOML syntax`}},
		{"f.yaml", "run:\n  seed: 1\nstages:\n  a:\n    kind: k\n    colour: 3\n", []string{`f.yaml:6:5: stages.a.colour: unknown key`}},
		{"f.yaml", "run:\n  seed: [1]\n", []string{`f.yaml:2:9: run.seed: expected an integer, got a list`}},
		{"f.yaml", "run:\n  seed: 1\n seed: 2\n", []string{`f.yaml:2:`, `YAML syntax`}},
		{"f.yaml", "run:\n  seed: 1\n  seed: 2\n", []string{`f.yaml:3:3:`, `duplicate key "seed"`}},
		{"f.json", "{\"run\": {\"seed\": 1.5}}", []string{`f.json:1:18: run.seed: expected an integer, got float 1.5`}},
		{"f.json", "{\n \"run\": {\"seed\": 1,}\n}", []string{`f.json:2:`, `JSON syntax`}},
		{"f.json", "{\"stages\": {\"a\": {\"kind\": \"k\", \"cache\": \"yes\"}}}", []string{`f.json:1:41: stages.a.cache: expected true or false`}},
		{"f.txt", "", []string{"unknown config format"}},
		{"f.toml", "[output]\ntrace_markers = \"on\"\n[stages.a]\nkind = \"k\"\n", []string{`f.toml:2:17: output.trace_markers: expected true or false`}},
	}
	for _, tc := range cases {
		_, err := Parse(tc.file, []byte(tc.body))
		if err == nil {
			t.Errorf("%s %q: no error", tc.file, tc.body)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s %q:\n got %v\nwant it to contain %q", tc.file, tc.body, err, w)
			}
		}
	}
}

func TestAllErrorsReportedAtOnce(t *testing.T) {
	_, err := Parse("f.toml", []byte("[run]\nseed = \"a\"\nbogus = 1\n[grid]\nwidth = -1\n"))
	es, ok := err.(Errors)
	if !ok || len(es) != 3 {
		t.Fatalf("want 3 errors at once, got %v", err)
	}
}

func TestTOMLFeatures(t *testing.T) {
	p, err := Parse("f.toml", []byte(`
[run]
seed = 0x10
[stages.a]
kind = "k"
params.big = 1_000
params.inf = inf
params.neg = -2.5e-3
params.list = [1, 2]
[stages.a.params.nested]
x = 1
`))
	if err != nil {
		t.Fatal(err)
	}
	if p.Seed != 16 {
		t.Errorf("seed %d", p.Seed)
	}
	s := p.Stage("a")
	if v := s.Param("big").Value.Value; v != int64(1000) {
		t.Errorf("big = %v", v)
	}
	if v := s.Param("inf").Value.Value; v != math.Inf(1) {
		t.Errorf("inf = %v", v)
	}
	if v := s.Param("neg").Value.Value; v != -2.5e-3 {
		t.Errorf("neg = %v", v)
	}
	if n := s.Param("list").Value; n.Kind != List || len(n.Items) != 2 {
		t.Errorf("list = %+v", n)
	}
	if n := s.Param("nested").Value; n.Kind != Map || n.Get("x") == nil {
		t.Errorf("nested = %+v", n)
	}
}

func TestOverrides(t *testing.T) {
	p, err := Parse("f.toml", []byte("[stages.a]\nkind = \"k\"\nparams = { x = 1 }\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"a.x=2.5", "a.y=true", "a.z=hello"} {
		o, err := ParseOverride(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Apply([]Override{o}); err != nil {
			t.Fatal(err)
		}
	}
	a := p.Stage("a")
	if a.Param("x").Value.Value != 2.5 || a.Param("y").Value.Value != true || a.Param("z").Value.Value != "hello" {
		t.Errorf("overrides not applied: %+v", a.Params)
	}
	o, _ := ParseOverride("nope.x=1")
	if err := p.Apply([]Override{o}); err == nil || !strings.Contains(err.Error(), `no stage named "nope"`) {
		t.Errorf("unknown stage override: %v", err)
	}
	if _, err := ParseOverride("noequals"); err == nil {
		t.Error("malformed override accepted")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"[run]\nseed = 1\n", `{"run": {"seed": 1}}`, "run:\n  seed: 1\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, name := range []string{"f.toml", "f.json", "f.yaml"} {
			_, _ = Parse(name, []byte(s)) // must not panic
		}
	})
}

func TestOutputTraceMarkers(t *testing.T) {
	for body, want := range map[string]bool{
		"[stages.a]\nkind = \"k\"\n":                                  false,
		"[output]\ntrace_markers = true\n[stages.a]\nkind = \"k\"\n":  true,
		"[output]\ntrace_markers = false\n[stages.a]\nkind = \"k\"\n": false,
	} {
		p, err := Parse("f.toml", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if p.Output.TraceMarkers != want {
			t.Errorf("%q: trace_markers %v, want %v", body, p.Output.TraceMarkers, want)
		}
	}
}

func TestRemoteCache(t *testing.T) {
	p, err := Parse("f.toml", []byte("[remote]\ncache = \"grpc://cache.example:9092\"\n[stages.a]\nkind = \"k\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Remote.Cache != "grpc://cache.example:9092" {
		t.Errorf("remote.cache %q", p.Remote.Cache)
	}
	_, err = Parse("f.toml", []byte("[remote]\ncash = \"grpc://x:1\"\n[stages.a]\nkind = \"k\"\n"))
	if err == nil || !strings.Contains(err.Error(), "f.toml:2:1: remote.cash: unknown key") {
		t.Errorf("misspelt key: %v", err)
	}
	_, err = Parse("f.toml", []byte("[remote]\ncache = 3\n[stages.a]\nkind = \"k\"\n"))
	if err == nil || !strings.Contains(err.Error(), "remote.cache") {
		t.Errorf("non-string cache: %v", err)
	}
}

func TestGridOverrides(t *testing.T) {
	p, err := Parse("f.toml", []byte("[grid]\ntopology = \"sphere\"\nwidth = 64\nheight = 32\n[stages.a]\nkind = \"k\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	var os []Override
	for _, s := range []string{"grid.width=4096", "grid.height=2048", "grid.levels=5", "grid.topology=torus", "grid.radius=7", "grid.minor_radius=2.5"} {
		o, err := ParseOverride(s)
		if err != nil {
			t.Fatal(err)
		}
		os = append(os, o)
	}
	if err := p.Apply(os); err != nil {
		t.Fatal(err)
	}
	if g := p.Grid; g.Width != 4096 || g.Height != 2048 || g.Levels != 5 || g.Topology != "torus" || g.Radius != 7 || g.MinorRadius != 2.5 {
		t.Errorf("grid overrides not applied: %+v", g)
	}
	for s, want := range map[string]string{"grid.width=0": "out of range", "grid.width=wide": "expected an integer", "grid.depth=3": "unknown grid key"} {
		o, _ := ParseOverride(s)
		if err := p.Apply([]Override{o}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", s, err, want)
		}
	}
}
