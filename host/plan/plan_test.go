package plan

import (
	"fmt"
	"math/rand"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/pipehost/pipehost/host/config"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// staticRegistry holds descriptors as a plugin would report them.
type staticRegistry map[string]*pb.StageDescriptor

func (r staticRegistry) Lookup(k string) (*pb.StageDescriptor, bool) { d, ok := r[k]; return d, ok }
func (r staticRegistry) Kinds() []string {
	var ks []string
	for k := range r {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func grid(name string, dt pb.DType, level uint32) *pb.Port {
	return &pb.Port{Name: name, Kind: pb.PortKind_PORT_KIND_GRID, Dtype: dt, Level: level}
}

func float(v float64) *pb.Value { return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: v}} }

var f32 = pb.DType_DTYPE_F32

func registry() staticRegistry {
	return staticRegistry{
		"dummy.source": {Kind: "dummy.source", Outputs: []*pb.Port{grid("out", f32, 0)},
			Params: []*pb.ParamSpec{{Name: "value", Type: pb.ParamType_PARAM_TYPE_FLOAT, Default: float(1)}}},
		"dummy.scale": {Kind: "dummy.scale", Inputs: []*pb.Port{grid("in", f32, 0)}, Outputs: []*pb.Port{grid("out", f32, 0)},
			Params: []*pb.ParamSpec{{Name: "factor", Type: pb.ParamType_PARAM_TYPE_FLOAT, Default: float(2)}}},
		"dummy.sink": {Kind: "dummy.sink", Inputs: []*pb.Port{grid("in", f32, 0)}},
		"dummy.mix": {Kind: "dummy.mix", Inputs: []*pb.Port{grid("a", f32, 0), grid("b", f32, 0),
			{Name: "mask", Kind: pb.PortKind_PORT_KIND_GRID, Dtype: f32, Optional: true}}, Outputs: []*pb.Port{grid("out", f32, 0)}},
		"dummy.f64":    {Kind: "dummy.f64", Outputs: []*pb.Port{grid("out", pb.DType_DTYPE_F64, 0)}},
		"dummy.coarse": {Kind: "dummy.coarse", Inputs: []*pb.Port{grid("in", f32, 1)}},
		"dummy.table":  {Kind: "dummy.table", Outputs: []*pb.Port{{Name: "rows", Kind: pb.PortKind_PORT_KIND_TABLE}}},
		"dummy.typed": {Kind: "dummy.typed", Params: []*pb.ParamSpec{
			{Name: "n", Type: pb.ParamType_PARAM_TYPE_INT},
			{Name: "flag", Type: pb.ParamType_PARAM_TYPE_BOOL, Default: &pb.Value{Kind: &pb.Value_BoolValue{}}},
			{Name: "name", Type: pb.ParamType_PARAM_TYPE_STRING, Default: &pb.Value{Kind: &pb.Value_StringValue{}}},
		}, Outputs: []*pb.Port{grid("out", f32, 0)}},
	}
}

func build(t *testing.T, body string) (*Plan, error) {
	t.Helper()
	cfg, err := config.Parse("p.toml", []byte("[grid]\nwidth = 32\nheight = 16\nlevels = 2\n"+body))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return Build(cfg, registry())
}

func TestRejects(t *testing.T) {
	cases := []struct {
		name, body string
		want       []string
	}{
		{"cycle naming its stages", `
[stages.a]
kind = "dummy.scale"
inputs = { in = "c.out" }
[stages.b]
kind = "dummy.scale"
inputs = { in = "a.out" }
[stages.c]
kind = "dummy.scale"
inputs = { in = "b.out" }
[stages.d]
kind = "dummy.sink"
inputs = { in = "c.out" }
`, []string{"cycle", "a → b → c → a"}},
		{"self loop", "[stages.a]\nkind = \"dummy.scale\"\ninputs = { in = \"a.out\" }\n", []string{"cycle: a → a"}},
		{"missing input", "[stages.s]\nkind = \"dummy.sink\"\n", []string{"p.toml:5:9: stages.s.inputs", `required input "in"`}},
		{"unknown kind", "[stages.s]\nkind = \"dummy.sorce\"\n", []string{"p.toml:6:8: stages.s.kind", `unknown stage kind "dummy.sorce"`, `did you mean "dummy.source"`}},
		{"unknown stage", "[stages.s]\nkind = \"dummy.sink\"\ninputs = { in = \"nope.out\" }\n", []string{`stages.s.inputs.in: no stage named "nope"`}},
		{"unknown input port", "[stages.a]\nkind = \"dummy.source\"\n[stages.s]\nkind = \"dummy.sink\"\ninputs = { input = \"a.out\" }\n", []string{`stages.s.inputs.input`, `has no input port "input"`}},
		{"unknown output port", "[stages.a]\nkind = \"dummy.source\"\n[stages.s]\nkind = \"dummy.sink\"\ninputs = { in = \"a.output\" }\n", []string{`has no output "output"`}},
		{"dtype mismatch", "[stages.a]\nkind = \"dummy.f64\"\n[stages.s]\nkind = \"dummy.sink\"\ninputs = { in = \"a.out\" }\n", []string{"dtype mismatch (f64 output, f32 input)"}},
		{"level mismatch", "[stages.a]\nkind = \"dummy.source\"\n[stages.s]\nkind = \"dummy.coarse\"\ninputs = { in = \"a.out\" }\n", []string{"pyramid level mismatch"}},
		{"kind mismatch", "[stages.a]\nkind = \"dummy.table\"\n[stages.s]\nkind = \"dummy.sink\"\ninputs = { in = \"a.rows\" }\n", []string{"kind mismatch (table output, grid input)"}},
		{"unknown param", "[stages.a]\nkind = \"dummy.source\"\nparams = { valeu = 1 }\n", []string{`p.toml:7:12: stages.a.params.valeu`, `has no param "valeu"`}},
		{"ill-typed param", "[stages.a]\nkind = \"dummy.source\"\nparams = { value = \"big\" }\n", []string{`stages.a.params.value: expected a number, got string "big"`}},
		{"int param given a float", "[stages.a]\nkind = \"dummy.typed\"\nparams = { n = 2.0 }\n", []string{`expected an integer, got float 2`}},
		{"bool param given an int", "[stages.a]\nkind = \"dummy.typed\"\nparams = { n = 1, flag = 1 }\n", []string{`stages.a.params.flag: expected a boolean`}},
		{"missing required param", "[stages.a]\nkind = \"dummy.typed\"\n", []string{`required param "n" (an integer)`}},
		{"bad save format", "[stages.a]\nkind = \"dummy.source\"\nsave = { out = \"parquet\" }\n", []string{`format "parquet" cannot hold a grid output`}},
		{"bad topology", "[stages.a]\nkind = \"dummy.source\"\n", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == nil {
				cfg, _ := config.Parse("p.toml", []byte("[grid]\ntopology = \"klein\"\n"+tc.body))
				_, err := Build(cfg, registry())
				if err == nil || !strings.Contains(err.Error(), "grid") {
					t.Fatalf("bad topology accepted: %v", err)
				}
				return
			}
			_, err := build(t, tc.body)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestOptionalInputAndDefaults(t *testing.T) {
	p, err := build(t, `
[stages.a]
kind = "dummy.source"
[stages.b]
kind = "dummy.source"
params = { value = 3 }
[stages.m]
kind = "dummy.mix"
inputs = { b = "b.out", a = "a.out" }
`)
	if err != nil {
		t.Fatal(err)
	}
	m := p.Node("m")
	if len(m.Inputs) != 2 || m.Inputs[0].Input.GetName() != "a" || m.Inputs[1].Input.GetName() != "b" {
		t.Errorf("inputs not in port order: %v", m.Inputs)
	}
	if v := p.Node("a").Params["value"].GetFloatValue(); v != 1 {
		t.Errorf("default not filled: %v", v)
	}
	if v := p.Node("b").Params["value"].GetFloatValue(); v != 3 {
		t.Errorf("int given for a float param: %v", v)
	}
	if len(p.Levels) != 2 || p.Levels[1].GetWidth() != 16 {
		t.Errorf("levels %v", p.Levels)
	}
}

// TestTopologicalOrderRandomDAGs checks the order on random DAGs of a few
// hundred stages declared in shuffled order.
func TestTopologicalOrderRandomDAGs(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for iter := 0; iter < 20; iter++ {
		n := 200 + rng.Intn(200)
		// Stage i may read from any j < i (a DAG by construction); the
		// config lists them shuffled so the order must be computed.
		var b strings.Builder
		perm := rng.Perm(n)
		edges := 0
		for _, i := range perm {
			if i == 0 || rng.Intn(5) == 0 {
				fmt.Fprintf(&b, "[stages.s%d]\nkind = \"dummy.source\"\n", i)
				continue
			}
			a, c := rng.Intn(i), rng.Intn(i)
			fmt.Fprintf(&b, "[stages.s%d]\nkind = \"dummy.mix\"\ninputs = { a = \"s%d.out\", b = \"s%d.out\" }\n", i, a, c)
			edges += 2
		}
		p, err := build(t, b.String())
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Nodes) != n {
			t.Fatalf("%d nodes, want %d", len(p.Nodes), n)
		}
		pos := map[string]int{}
		for i, nd := range p.Nodes {
			pos[nd.Name] = i
			if nd.Index != i {
				t.Fatalf("node %s has Index %d at position %d", nd.Name, nd.Index, i)
			}
		}
		seen := 0
		for _, nd := range p.Nodes {
			for _, e := range nd.Inputs {
				seen++
				if pos[e.From.Name] >= pos[nd.Name] {
					t.Fatalf("%s comes before its input %s", nd.Name, e.From.Name)
				}
			}
		}
		if seen != edges {
			t.Fatalf("%d edges, want %d", seen, edges)
		}
	}
}

func TestSamePlanFromEveryFormat(t *testing.T) {
	type summary struct {
		Order  []string
		Seeds  []uint64
		Params []string
		Edges  []string
		Topo   string
		Levels string
	}
	var got []summary
	for _, ext := range []string{"toml", "json", "yaml"} {
		cfg, err := config.Load(filepath.Join("..", "..", "testdata", "config", "three."+ext))
		if err != nil {
			t.Fatal(err)
		}
		p, err := Build(cfg, registry())
		if err != nil {
			t.Fatalf("%s: %v", ext, err)
		}
		var s summary
		for _, n := range p.Nodes {
			s.Order = append(s.Order, n.Name+":"+n.Kind)
			s.Seeds = append(s.Seeds, n.Seed)
			s.Params = append(s.Params, fmt.Sprint(n.Params))
			for _, e := range n.Inputs {
				s.Edges = append(s.Edges, e.From.Name+"."+e.Output.GetName()+"->"+n.Name+"."+e.Input.GetName())
			}
		}
		s.Topo, s.Levels = p.Topology.String(), fmt.Sprint(p.Levels)
		got = append(got, s)
	}
	for i := 1; i < len(got); i++ {
		if fmt.Sprint(got[i]) != fmt.Sprint(got[0]) {
			t.Errorf("plan %d differs:\n%+v\n%+v", i, got[i], got[0])
		}
	}
	if len(got[0].Order) != 3 || got[0].Order[0] != "source:dummy.source" {
		t.Errorf("unexpected plan %+v", got[0])
	}
}

func BenchmarkBuild10k(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("[grid]\nwidth = 32\nheight = 16\n[stages.s0]\nkind = \"dummy.source\"\n")
	for i := 1; i < 10000; i++ {
		fmt.Fprintf(&sb, "[stages.s%d]\nkind = \"dummy.scale\"\ninputs = { in = \"s%d.out\" }\n", i, i-1)
	}
	data := []byte(sb.String())
	reg := registry()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cfg, err := config.Parse("p.toml", data)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Build(cfg, reg); err != nil {
			b.Fatal(err)
		}
	}
}
