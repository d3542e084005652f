// Package plan turns a pipeline config and the plugins' stage descriptors
// into a validated DAG in topological order. Every check happens here,
// before any stage starts, and every problem found is reported at once.
package plan

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/pipehost/pipehost/host/config"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/sdk/seed"
)

// Registry resolves stage kinds to descriptors.
type Registry interface {
	Lookup(kind string) (*pb.StageDescriptor, bool)
	Kinds() []string
}

// Plan is a validated pipeline: its stages in topological order.
type Plan struct {
	Config   *config.Pipeline
	Nodes    []*Node
	Topology *pb.Topology
	Levels   []*pb.GridInfo
	byName   map[string]*Node
}

// Node is one stage instance.
type Node struct {
	Name   string
	Kind   string
	Desc   *pb.StageDescriptor
	Config *config.Stage
	// Params holds every declared param, defaults filled in.
	Params map[string]*pb.Value
	Seed   uint64
	// Inputs are the wired inputs in the descriptor's port order.
	Inputs []*Edge
	// Consumers are the edges that read this node's outputs.
	Consumers []*Edge
	// Index is the node's position in Plan.Nodes.
	Index int
	// Remote: the stage runs on the remote executor (remote.kinds or the
	// stage's remote = true), with Platform as its action's properties.
	Remote   bool
	Platform map[string]string
}

// Edge connects a producer's output port to a consumer's input port.
type Edge struct {
	From   *Node
	Output *pb.Port
	To     *Node
	Input  *pb.Port
}

// Node returns the stage named name, or nil.
func (p *Plan) Node(name string) *Node { return p.byName[name] }

// OutputPort returns the descriptor's output port called name.
func (n *Node) OutputPort(name string) *pb.Port { return port(n.Desc.GetOutputs(), name) }

// InputPort returns the descriptor's input port called name.
func (n *Node) InputPort(name string) *pb.Port { return port(n.Desc.GetInputs(), name) }

func port(ports []*pb.Port, name string) *pb.Port {
	for _, p := range ports {
		if p.GetName() == name {
			return p
		}
	}
	return nil
}

// ConsumersOf lists the stages reading output port out.
func (n *Node) ConsumersOf(out string) []*Edge {
	var es []*Edge
	for _, e := range n.Consumers {
		if e.Output.GetName() == out {
			es = append(es, e)
		}
	}
	return es
}

type builder struct {
	cfg  *config.Pipeline
	reg  Registry
	errs config.Errors
}

func (b *builder) errorf(pos config.Pos, key, format string, args ...any) {
	b.errs = append(b.errs, &config.Error{Pos: pos, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// Build validates cfg against the registry and orders its stages.
func Build(cfg *config.Pipeline, reg Registry) (*Plan, error) {
	b := &builder{cfg: cfg, reg: reg}
	p := &Plan{Config: cfg, byName: map[string]*Node{}}
	p.Topology, p.Levels = b.grid()
	for _, sc := range cfg.Stages {
		key := "stages." + sc.Name
		n := &Node{Name: sc.Name, Kind: sc.Kind, Config: sc, Seed: seed.StageSeed(cfg.Seed, sc.Name)}
		if _, dup := p.byName[sc.Name]; dup {
			b.errorf(sc.Pos, key, "stage defined twice")
			continue
		}
		p.byName[sc.Name] = n
		desc, ok := reg.Lookup(sc.Kind)
		if !ok {
			b.errorf(sc.KindPos, key+".kind", "unknown stage kind %q%s", sc.Kind, suggest(sc.Kind, reg.Kinds()))
			continue
		}
		n.Desc = desc
		n.Params = b.params(sc, desc)
		b.save(sc, desc)
		for _, out := range desc.GetOutputs() {
			if out.GetKind() == pb.PortKind_PORT_KIND_GRID && int(out.GetLevel()) >= len(p.Levels) && len(p.Levels) > 0 {
				b.errorf(sc.KindPos, key, "kind %s writes output %q at pyramid level %d, but grid.levels is %d", sc.Kind, out.GetName(), out.GetLevel(), len(p.Levels))
			}
		}
	}
	b.remote(p)
	// Wiring needs every node to exist first.
	for _, sc := range cfg.Stages {
		n := p.byName[sc.Name]
		if n == nil || n.Desc == nil {
			continue
		}
		b.wire(p, n)
	}
	if err := b.errs.Err(); err != nil {
		return nil, err
	}
	order, cycle := topoSort(cfg.Stages, p.byName)
	if cycle != nil {
		s := p.byName[cycle[0]].Config
		return nil, &config.Error{Pos: s.Pos, Key: "stages." + cycle[0], Msg: "the pipeline has a cycle: " + strings.Join(append(cycle, cycle[0]), " → ")}
	}
	p.Nodes = order
	for i, n := range order {
		n.Index = i
	}
	return p, nil
}

func (b *builder) wire(p *Plan, n *Node) {
	key := "stages." + n.Name + ".inputs"
	wired := map[string]bool{}
	for _, in := range n.Config.Inputs {
		ik := key + "." + in.Port
		ip := n.InputPort(in.Port)
		if ip == nil {
			b.errorf(in.Pos, ik, "kind %s has no input port %q (inputs: %s)", n.Kind, in.Port, portNames(n.Desc.GetInputs()))
			continue
		}
		wired[in.Port] = true
		from := p.byName[in.Stage]
		if from == nil {
			b.errorf(in.Pos, ik, "no stage named %q%s", in.Stage, suggest(in.Stage, b.cfg.StageNames()))
			continue
		}
		if from.Desc == nil {
			continue // already reported
		}
		op := from.OutputPort(in.Output)
		if op == nil {
			b.errorf(in.Pos, ik, "stage %s (%s) has no output %q (outputs: %s)", from.Name, from.Kind, in.Output, portNames(from.Desc.GetOutputs()))
			continue
		}
		if msg := compatible(op, ip); msg != "" {
			b.errorf(in.Pos, ik, "%s.%s cannot feed %s.%s: %s", from.Name, op.GetName(), n.Name, ip.GetName(), msg)
			continue
		}
		e := &Edge{From: from, Output: op, To: n, Input: ip}
		n.Inputs = append(n.Inputs, e)
		from.Consumers = append(from.Consumers, e)
	}
	for _, ip := range n.Desc.GetInputs() {
		if !wired[ip.GetName()] && !ip.GetOptional() {
			b.errorf(n.Config.Pos, "stages."+n.Name+".inputs", "required input %q of kind %s is not wired (write %s = \"stage.output\")", ip.GetName(), n.Kind, ip.GetName())
		}
	}
	// Keep inputs in the descriptor's port order for deterministic requests.
	sort.SliceStable(n.Inputs, func(i, j int) bool {
		return portIndex(n.Desc.GetInputs(), n.Inputs[i].Input.GetName()) < portIndex(n.Desc.GetInputs(), n.Inputs[j].Input.GetName())
	})
}

func portIndex(ports []*pb.Port, name string) int {
	for i, p := range ports {
		if p.GetName() == name {
			return i
		}
	}
	return -1
}

// compatible says why an output cannot feed an input, or "".
func compatible(out, in *pb.Port) string {
	if out.GetKind() != in.GetKind() {
		return fmt.Sprintf("kind mismatch (%s output, %s input)", KindName(out.GetKind()), KindName(in.GetKind()))
	}
	if out.GetKind() == pb.PortKind_PORT_KIND_GRID {
		if out.GetDtype() != in.GetDtype() {
			return fmt.Sprintf("dtype mismatch (%s output, %s input)", DTypeName(out.GetDtype()), DTypeName(in.GetDtype()))
		}
		if out.GetLevel() != in.GetLevel() {
			return fmt.Sprintf("pyramid level mismatch (output at level %d, input wants level %d)", out.GetLevel(), in.GetLevel())
		}
	}
	return ""
}

func (b *builder) params(sc *config.Stage, desc *pb.StageDescriptor) map[string]*pb.Value {
	key := "stages." + sc.Name + ".params"
	out := map[string]*pb.Value{}
	for _, prm := range sc.Params {
		spec := paramSpec(desc, prm.Name)
		if spec == nil {
			b.errorf(prm.Pos, key+"."+prm.Name, "kind %s has no param %q (params: %s)", desc.GetKind(), prm.Name, paramNames(desc))
			continue
		}
		v, msg := convert(prm.Value, spec.GetType())
		if msg != "" {
			b.errorf(prm.Value.Pos, key+"."+prm.Name, "%s", msg)
			continue
		}
		out[prm.Name] = v
	}
	for _, spec := range desc.GetParams() {
		if _, ok := out[spec.GetName()]; ok {
			continue
		}
		if sc.Param(spec.GetName()) != nil {
			continue // present but invalid: reported above
		}
		if spec.GetDefault() == nil {
			b.errorf(sc.Pos, key, "required param %q (%s) of kind %s is missing", spec.GetName(), typeName(spec.GetType()), desc.GetKind())
			continue
		}
		out[spec.GetName()] = spec.GetDefault()
	}
	return out
}

func (b *builder) save(sc *config.Stage, desc *pb.StageDescriptor) {
	for _, s := range sc.Save {
		key := "stages." + sc.Name + ".save." + s.Port
		op := port(desc.GetOutputs(), s.Port)
		if op == nil {
			b.errorf(s.Pos, key, "kind %s has no output %q (outputs: %s)", desc.GetKind(), s.Port, portNames(desc.GetOutputs()))
			continue
		}
		for _, f := range s.Formats {
			if msg := formatFits(f, op); msg != "" {
				b.errorf(s.Pos, key, "%s", msg)
			}
		}
	}
}

// Formats lists the dataset formats per port kind (docs/formats.md). For
// grids, "relief" writes no file of its own: it asks for a shaded-relief
// preview around sea level 0 instead of the default shaded ramp.
var Formats = map[pb.PortKind][]string{
	pb.PortKind_PORT_KIND_GRID:  {"cog", "cog-zstd", "npz", "npz-compressed", "relief"},
	pb.PortKind_PORT_KIND_TABLE: {"geoparquet", "arrow"},
	pb.PortKind_PORT_KIND_BLOB:  {"raw"},
}

// cogDTypes are the grid dtypes a GeoTIFF holds (no 64-bit integers).
var cogDTypes = map[pb.DType]bool{
	pb.DType_DTYPE_F32: true, pb.DType_DTYPE_F64: true, pb.DType_DTYPE_I8: true, pb.DType_DTYPE_I16: true,
	pb.DType_DTYPE_I32: true, pb.DType_DTYPE_U8: true, pb.DType_DTYPE_U16: true, pb.DType_DTYPE_U32: true,
}

func formatFits(format string, p *pb.Port) string {
	for _, f := range Formats[p.GetKind()] {
		if f == format {
			if strings.HasPrefix(f, "cog") && !cogDTypes[p.GetDtype()] {
				return fmt.Sprintf("format %q cannot hold %s grids (GeoTIFF has no 64-bit integers; use npz)", format, DTypeName(p.GetDtype()))
			}
			return ""
		}
	}
	return fmt.Sprintf("format %q cannot hold a %s output (use one of: %s)", format, KindName(p.GetKind()), strings.Join(Formats[p.GetKind()], ", "))
}

func paramSpec(desc *pb.StageDescriptor, name string) *pb.ParamSpec {
	for _, s := range desc.GetParams() {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// convert checks a config value against a declared param type.
func convert(n *config.Node, t pb.ParamType) (*pb.Value, string) {
	bad := func() (*pb.Value, string) {
		return nil, fmt.Sprintf("expected %s, got %s", typeName(t), describeNode(n))
	}
	if n.Kind != config.Scalar {
		return bad()
	}
	switch t {
	case pb.ParamType_PARAM_TYPE_BOOL:
		if v, ok := n.Value.(bool); ok {
			return &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: v}}, ""
		}
	case pb.ParamType_PARAM_TYPE_INT:
		if v, ok := n.Value.(int64); ok {
			return &pb.Value{Kind: &pb.Value_IntValue{IntValue: v}}, ""
		}
		if v, ok := n.Value.(float64); ok && v == math.Trunc(v) && math.Abs(v) < 1<<53 {
			return nil, fmt.Sprintf("expected an integer, got float %v (write %d)", v, int64(v))
		}
	case pb.ParamType_PARAM_TYPE_FLOAT:
		switch v := n.Value.(type) {
		case float64:
			return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: v}}, ""
		case int64:
			return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: float64(v)}}, ""
		}
	case pb.ParamType_PARAM_TYPE_STRING:
		if v, ok := n.Value.(string); ok {
			return &pb.Value{Kind: &pb.Value_StringValue{StringValue: v}}, ""
		}
	}
	return bad()
}

func describeNode(n *config.Node) string {
	if n.Kind != config.Scalar {
		return "a " + n.TypeName()
	}
	if s, ok := n.Value.(string); ok {
		return fmt.Sprintf("string %q", s)
	}
	return fmt.Sprintf("%s %v", n.TypeName(), n.Value)
}

func typeName(t pb.ParamType) string {
	switch t {
	case pb.ParamType_PARAM_TYPE_BOOL:
		return "a boolean"
	case pb.ParamType_PARAM_TYPE_INT:
		return "an integer"
	case pb.ParamType_PARAM_TYPE_FLOAT:
		return "a number"
	case pb.ParamType_PARAM_TYPE_STRING:
		return "a string"
	}
	return "a value"
}

// KindName is a port kind as users write it: "grid", "table", "blob".
func KindName(k pb.PortKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "PORT_KIND_"))
}

// DTypeName is a dtype as users write it: "f32", "u8", ...
func DTypeName(d pb.DType) string {
	return strings.ToLower(strings.TrimPrefix(d.String(), "DTYPE_"))
}

func portNames(ports []*pb.Port) string {
	if len(ports) == 0 {
		return "none"
	}
	var names []string
	for _, p := range ports {
		names = append(names, p.GetName())
	}
	return strings.Join(names, ", ")
}

func paramNames(desc *pb.StageDescriptor) string {
	if len(desc.GetParams()) == 0 {
		return "none"
	}
	var names []string
	for _, p := range desc.GetParams() {
		names = append(names, p.GetName())
	}
	return strings.Join(names, ", ")
}

// suggest offers the closest known name when it is close enough.
func suggest(name string, known []string) string {
	best, bestD := "", 4
	for _, k := range known {
		if d := levenshtein(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
