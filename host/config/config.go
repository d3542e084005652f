package config

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Pipeline is a loaded pipeline config, the same whatever the file format.
type Pipeline struct {
	File  string
	RunID string
	Seed  uint64
	// Timeout is the default per-stage timeout; 0 means none.
	Timeout time.Duration
	Grid    Grid
	Stages  []*Stage
	Output  Output
	// Resources are capacities of named resources (e.g. gpu = 2); the
	// command line overrides them.
	Resources map[string]int
	// PluginEnv names the host environment variables passed on to plugins,
	// beyond the few every plugin gets (plugins.env).
	PluginEnv []string
	// Remote configures the shared REAPI cache and remote execution
	// (docs/scale-out.md).
	Remote Remote
}

// Remote is the config's [remote] table.
type Remote struct {
	// Cache is the remote cache's endpoint, grpc://HOST:PORT ("": none);
	// the command line's --remote-cache takes precedence.
	Cache string
	// Executor is the REAPI execution endpoint, grpc://HOST:PORT ("":
	// none); the command line's --remote-executor takes precedence.
	Executor    string
	ExecutorPos Pos
	// Kinds are the stage kinds that run on the executor (a stage's own
	// remote setting overrides it).
	Kinds    []string
	KindsPos []Pos
	// Fallback is what a remote stage does when the executor cannot be
	// reached: "error" (the default) or "local".
	Fallback    string
	FallbackPos Pos
	// Platform are the REAPI platform properties of remote actions; a
	// stage's platform table overrides them key by key.
	Platform map[string]string
	Pos      Pos
}

// Fallback policies of remote execution.
const (
	FallbackError = "error"
	FallbackLocal = "local"
)

// Grid is the run's grid: topology, native size and pyramid depth.
type Grid struct {
	Topology string
	Width    int
	Height   int
	// Levels counts the pyramid levels including the native one (>= 1).
	Levels      int
	Radius      float64
	MinorRadius float64
	// Caps is the cylinder's y behaviour at its ends: "clamp" or "reflect".
	Caps string
	Pos  Pos
}

// Output says where and how a run's datasets are written.
type Output struct {
	Dir string
	// TraceMarkers writes stages and subtasks to tracefs trace_marker for
	// system profilers (docs/runlog.md).
	TraceMarkers bool
	Pos          Pos
}

// Stage is one stage instance of the pipeline.
type Stage struct {
	Name    string
	Pos     Pos
	Kind    string
	KindPos Pos
	Params  []Param
	Inputs  []Input
	// Timeout overrides the pipeline's default; 0 means inherit.
	Timeout time.Duration
	// Cache is nil when the config does not say.
	Cache *bool
	// Save lists the outputs written as datasets.
	Save []Save
	// Remote is nil when the config does not say; true runs the stage on
	// the remote executor, false keeps it local whatever remote.kinds says.
	Remote    *bool
	RemotePos Pos
	// Platform overrides remote.platform for this stage's actions.
	Platform    map[string]string
	PlatformPos Pos
}

// Param is a parameter value as written; the plan checks it against the
// stage's declared parameter types.
type Param struct {
	Name  string
	Value *Node
	Pos   Pos
}

// Input wires an input port to another stage's output: port = "stage.output".
type Input struct {
	Port   string
	Stage  string
	Output string
	Pos    Pos
}

// Save asks for one stage output to be written as a dataset.
type Save struct {
	Port    string
	Formats []string
	Pos     Pos
}

// Param returns the named param, or nil.
func (s *Stage) Param(name string) *Param {
	for i := range s.Params {
		if s.Params[i].Name == name {
			return &s.Params[i]
		}
	}
	return nil
}

// Load reads a config file; the format follows the extension (.toml,
// .json, .yaml or .yml).
func Load(path string) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading pipeline config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes config bytes; file names the source in errors and picks the
// format by its extension.
func Parse(file string, data []byte) (*Pipeline, error) {
	var root *Node
	var err error
	switch strings.ToLower(filepath.Ext(file)) {
	case ".toml":
		root, err = parseTOML(file, data)
	case ".json":
		root, err = parseJSON(file, data)
	case ".yaml", ".yml":
		root, err = parseYAML(file, data)
	default:
		return nil, &Error{Pos: Pos{File: file}, Msg: "unknown config format: use a .toml, .json, .yaml or .yml file"}
	}
	if err != nil {
		return nil, err
	}
	return decode(file, root)
}

var nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

type decoder struct {
	errs Errors
}

func (d *decoder) errorf(p Pos, key, format string, args ...any) {
	d.errs = append(d.errs, &Error{Pos: p, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// fields checks a map node for unknown keys and returns it, or nil.
func (d *decoder) fields(n *Node, key string, allowed ...string) *Node {
	if n.Kind != Map {
		d.errorf(n.Pos, key, "expected a table, got a %s", n.TypeName())
		return nil
	}
	for _, f := range n.Fields {
		if !contains(allowed, f.Key) {
			d.errorf(f.KeyPos, join(key, f.Key), "unknown key (known here: %s)", strings.Join(allowed, ", "))
		}
	}
	return n
}

func (d *decoder) str(f *Field, key string) (string, bool) {
	if s, ok := f.Value.Value.(string); ok && f.Value.Kind == Scalar {
		return s, true
	}
	d.errorf(f.Value.Pos, key, "expected a string, got %s", describe(f.Value))
	return "", false
}

func (d *decoder) integer(f *Field, key string, min, max int64) (int64, bool) {
	i, ok := f.Value.Value.(int64)
	if !ok || f.Value.Kind != Scalar {
		d.errorf(f.Value.Pos, key, "expected an integer, got %s", describe(f.Value))
		return 0, false
	}
	if i < min || i > max {
		d.errorf(f.Value.Pos, key, "%d is out of range [%d, %d]", i, min, max)
		return 0, false
	}
	return i, true
}

func (d *decoder) number(f *Field, key string) (float64, bool) {
	switch v := f.Value.Value.(type) {
	case int64:
		return float64(v), true
	case float64:
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			return v, true
		}
	}
	d.errorf(f.Value.Pos, key, "expected a finite number, got %s", describe(f.Value))
	return 0, false
}

func (d *decoder) boolean(f *Field, key string) (bool, bool) {
	if b, ok := f.Value.Value.(bool); ok {
		return b, true
	}
	d.errorf(f.Value.Pos, key, "expected true or false, got %s", describe(f.Value))
	return false, false
}

func (d *decoder) duration(f *Field, key string) time.Duration {
	s, ok := d.str(f, key)
	if !ok {
		return 0
	}
	t, err := time.ParseDuration(s)
	if err != nil || t <= 0 {
		d.errorf(f.Value.Pos, key, "%q is not a positive duration (write e.g. \"90s\", \"5m\", \"1h30m\")", s)
		return 0
	}
	return t
}

func decode(file string, root *Node) (*Pipeline, error) {
	d := &decoder{}
	p := &Pipeline{File: file, Grid: Grid{Topology: "plane", Width: 64, Height: 64, Levels: 1}}
	p.RunID = strings.TrimSuffix(filepath.Base(file), filepath.Ext(file))
	if d.fields(root, "", "run", "grid", "stages", "output", "resources", "plugins", "remote") == nil {
		return nil, d.errs.Err()
	}
	if f := root.Get("run"); f != nil {
		if n := d.fields(f.Value, "run", "id", "seed", "timeout"); n != nil {
			if g := n.Get("id"); g != nil {
				if s, ok := d.str(g, "run.id"); ok {
					if !nameRE.MatchString(s) {
						d.errorf(g.Value.Pos, "run.id", "%q is not a valid run id (letters, digits, _ and -)", s)
					}
					p.RunID = s
				}
			}
			if g := n.Get("seed"); g != nil {
				if i, ok := d.integer(g, "run.seed", 0, math.MaxInt64); ok {
					p.Seed = uint64(i)
				}
			}
			if g := n.Get("timeout"); g != nil {
				p.Timeout = d.duration(g, "run.timeout")
			}
		}
	}
	if f := root.Get("grid"); f != nil {
		p.Grid.Pos = f.Value.Pos
		if n := d.fields(f.Value, "grid", "topology", "width", "height", "levels", "radius", "minor_radius", "caps"); n != nil {
			if g := n.Get("topology"); g != nil {
				p.Grid.Topology, _ = d.str(g, "grid.topology")
			}
			if g := n.Get("width"); g != nil {
				if i, ok := d.integer(g, "grid.width", 1, 1<<20); ok {
					p.Grid.Width = int(i)
				}
			}
			if g := n.Get("height"); g != nil {
				if i, ok := d.integer(g, "grid.height", 1, 1<<20); ok {
					p.Grid.Height = int(i)
				}
			}
			if g := n.Get("levels"); g != nil {
				if i, ok := d.integer(g, "grid.levels", 1, 21); ok {
					p.Grid.Levels = int(i)
				}
			}
			if g := n.Get("radius"); g != nil {
				p.Grid.Radius, _ = d.number(g, "grid.radius")
			}
			if g := n.Get("minor_radius"); g != nil {
				p.Grid.MinorRadius, _ = d.number(g, "grid.minor_radius")
			}
			if g := n.Get("caps"); g != nil {
				p.Grid.Caps, _ = d.str(g, "grid.caps")
			}
		}
	}
	if f := root.Get("output"); f != nil {
		p.Output.Pos = f.Value.Pos
		if n := d.fields(f.Value, "output", "dir", "trace_markers"); n != nil {
			if g := n.Get("dir"); g != nil {
				p.Output.Dir, _ = d.str(g, "output.dir")
			}
			if g := n.Get("trace_markers"); g != nil {
				p.Output.TraceMarkers, _ = d.boolean(g, "output.trace_markers")
			}
		}
	}
	if f := root.Get("remote"); f != nil {
		d.remote(p, f)
	}
	if f := root.Get("resources"); f != nil {
		if f.Value.Kind != Map {
			d.errorf(f.Value.Pos, "resources", "expected a table of name = count, got a %s", f.Value.TypeName())
		} else {
			p.Resources = map[string]int{}
			for _, rf := range f.Value.Fields {
				if i, ok := d.integer(&rf, "resources."+rf.Key, 0, 1<<20); ok {
					p.Resources[rf.Key] = int(i)
				}
			}
		}
	}
	if f := root.Get("plugins"); f != nil {
		if n := d.fields(f.Value, "plugins", "env"); n != nil {
			if g := n.Get("env"); g != nil {
				if g.Value.Kind != List {
					d.errorf(g.Value.Pos, "plugins.env", "expected a list of environment variable names, got %s", describe(g.Value))
				} else {
					for i, item := range g.Value.Items {
						key := fmt.Sprintf("plugins.env[%d]", i)
						name, ok := d.str(&Field{Key: key, Value: item}, key)
						if ok && (name == "" || strings.ContainsAny(name, "=\x00")) {
							d.errorf(item.Pos, key, "%q is not an environment variable name", name)
						} else if ok {
							p.PluginEnv = append(p.PluginEnv, name)
						}
					}
				}
			}
		}
	}
	if f := root.Get("stages"); f != nil {
		if f.Value.Kind != Map {
			d.errorf(f.Value.Pos, "stages", "expected a table of stages keyed by name, got a %s", f.Value.TypeName())
		} else {
			for _, sf := range f.Value.Fields {
				if s := d.stage(sf); s != nil {
					p.Stages = append(p.Stages, s)
				}
			}
		}
	}
	if len(p.Stages) == 0 && len(d.errs) == 0 {
		d.errorf(root.Pos, "stages", "the pipeline has no stages")
	}
	if err := d.errs.Err(); err != nil {
		return nil, err
	}
	return p, nil
}

func (d *decoder) stage(sf Field) *Stage {
	key := "stages." + sf.Key
	s := &Stage{Name: sf.Key, Pos: sf.KeyPos}
	if !nameRE.MatchString(sf.Key) || strings.Contains(sf.Key, ".") {
		d.errorf(sf.KeyPos, key, "%q is not a valid stage name (letters, digits, _ and -; no dots)", sf.Key)
	}
	n := d.fields(sf.Value, key, "kind", "params", "inputs", "timeout", "cache", "save", "remote", "platform")
	if n == nil {
		return nil
	}
	if g := n.Get("kind"); g != nil {
		s.Kind, _ = d.str(g, key+".kind")
		s.KindPos = g.Value.Pos
	} else {
		d.errorf(sf.KeyPos, key, "missing required key \"kind\"")
	}
	if g := n.Get("params"); g != nil {
		if g.Value.Kind != Map {
			d.errorf(g.Value.Pos, key+".params", "expected a table, got a %s", g.Value.TypeName())
		} else {
			for _, pf := range g.Value.Fields {
				s.Params = append(s.Params, Param{Name: pf.Key, Value: pf.Value, Pos: pf.KeyPos})
			}
		}
	}
	if g := n.Get("inputs"); g != nil {
		if g.Value.Kind != Map {
			d.errorf(g.Value.Pos, key+".inputs", "expected a table of port = \"stage.output\", got a %s", g.Value.TypeName())
		} else {
			for _, inf := range g.Value.Fields {
				ik := key + ".inputs." + inf.Key
				ref, ok := d.str(&inf, ik)
				if !ok {
					continue
				}
				st, out, found := strings.Cut(ref, ".")
				if !found || st == "" || out == "" || strings.Contains(out, ".") {
					d.errorf(inf.Value.Pos, ik, "%q is not a reference of the form \"stage.output\"", ref)
					continue
				}
				s.Inputs = append(s.Inputs, Input{Port: inf.Key, Stage: st, Output: out, Pos: inf.Value.Pos})
			}
		}
	}
	if g := n.Get("timeout"); g != nil {
		s.Timeout = d.duration(g, key+".timeout")
	}
	if g := n.Get("cache"); g != nil {
		if b, ok := d.boolean(g, key+".cache"); ok {
			s.Cache = &b
		}
	}
	if g := n.Get("save"); g != nil {
		d.save(s, g, key+".save")
	}
	if g := n.Get("remote"); g != nil {
		if b, ok := d.boolean(g, key+".remote"); ok {
			s.Remote, s.RemotePos = &b, g.Value.Pos
		}
	}
	if g := n.Get("platform"); g != nil {
		s.Platform, s.PlatformPos = d.platform(g, key+".platform"), g.Value.Pos
	}
	return s
}

// save decodes save = { port = ["cog", "npz"] } (a single string is one format).
func (d *decoder) save(s *Stage, g *Field, key string) {
	if g.Value.Kind != Map {
		d.errorf(g.Value.Pos, key, "expected a table of output = [formats], got a %s", g.Value.TypeName())
		return
	}
	for _, f := range g.Value.Fields {
		sv := Save{Port: f.Key, Pos: f.KeyPos}
		items := f.Value.Items
		if f.Value.Kind == Scalar {
			items = []*Node{f.Value}
		}
		for _, it := range items {
			if str, ok := it.Value.(string); ok && it.Kind == Scalar {
				sv.Formats = append(sv.Formats, str)
			} else {
				d.errorf(it.Pos, key+"."+f.Key, "expected a format name, got %s", describe(it))
			}
		}
		s.Save = append(s.Save, sv)
	}
}

// Override is one --set stage.param=value from the command line.
type Override struct {
	Stage, Param string
	Value        *Node
}

// ParseOverride parses "stage.param=value". The value is read as an integer,
// a float or a boolean when it looks like one, otherwise as a string.
func ParseOverride(s string) (Override, error) {
	lhs, val, ok := strings.Cut(s, "=")
	st, param, ok2 := strings.Cut(lhs, ".")
	if !ok || !ok2 || st == "" || param == "" {
		return Override{}, fmt.Errorf("--set %q: expected stage.param=value", s)
	}
	n := &Node{Kind: Scalar, Pos: Pos{File: "--set " + lhs}}
	if i, err := strconv.ParseInt(val, 10, 64); err == nil {
		n.Value = i
	} else if f, err := strconv.ParseFloat(val, 64); err == nil {
		n.Value = f
	} else if b, err := strconv.ParseBool(val); err == nil && (val == "true" || val == "false") {
		n.Value = b
	} else {
		n.Value = val
	}
	return Override{Stage: st, Param: param, Value: n}, nil
}

// Apply sets overrides on the pipeline; an unknown stage is an error.
// "grid.KEY=value" sets a key of the [grid] table (width, height, levels,
// topology, radius, minor_radius, caps) unless a stage is named grid.
func (p *Pipeline) Apply(overrides []Override) error {
	var errs Errors
	for _, o := range overrides {
		s := p.Stage(o.Stage)
		if s == nil && o.Stage == "grid" {
			if err := p.setGrid(o); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if s == nil {
			errs = append(errs, &Error{Pos: o.Value.Pos, Msg: fmt.Sprintf("no stage named %q in %s", o.Stage, p.File)})
			continue
		}
		if prm := s.Param(o.Param); prm != nil {
			prm.Value, prm.Pos = o.Value, o.Value.Pos
		} else {
			s.Params = append(s.Params, Param{Name: o.Param, Value: o.Value, Pos: o.Value.Pos})
		}
	}
	return errs.Err()
}

// setGrid applies one grid.KEY override with the checks the config file gets.
func (p *Pipeline) setGrid(o Override) *Error {
	bad := func(format string, args ...any) *Error {
		return &Error{Pos: o.Value.Pos, Key: "grid." + o.Param, Msg: fmt.Sprintf(format, args...)}
	}
	switch o.Param {
	case "width", "height", "levels":
		i, ok := o.Value.Value.(int64)
		hi := int64(1 << 20)
		if o.Param == "levels" {
			hi = 21
		}
		if !ok || i < 1 || i > hi {
			if ok {
				return bad("%d is out of range [1, %d]", i, hi)
			}
			return bad("expected an integer, got %s", describe(o.Value))
		}
		switch o.Param {
		case "width":
			p.Grid.Width = int(i)
		case "height":
			p.Grid.Height = int(i)
		default:
			p.Grid.Levels = int(i)
		}
	case "radius", "minor_radius":
		var f float64
		switch v := o.Value.Value.(type) {
		case int64:
			f = float64(v)
		case float64:
			f = v
		default:
			return bad("expected a number, got %s", describe(o.Value))
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return bad("expected a finite number, got %s", describe(o.Value))
		}
		if o.Param == "radius" {
			p.Grid.Radius = f
		} else {
			p.Grid.MinorRadius = f
		}
	case "topology", "caps":
		v, ok := o.Value.Value.(string)
		if !ok {
			return bad("expected a string, got %s", describe(o.Value))
		}
		if o.Param == "topology" {
			p.Grid.Topology = v
		} else {
			p.Grid.Caps = v
		}
	default:
		return bad("unknown grid key %q (width, height, levels, topology, radius, minor_radius, caps)", o.Param)
	}
	return nil
}

// Stage returns the stage named name, or nil.
func (p *Pipeline) Stage(name string) *Stage {
	for _, s := range p.Stages {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// StageNames lists stage names in sorted order (for messages).
func (p *Pipeline) StageNames() []string {
	var names []string
	for _, s := range p.Stages {
		names = append(names, s.Name)
	}
	sort.Strings(names)
	return names
}

func describe(n *Node) string {
	if n.Kind != Scalar {
		return "a " + n.TypeName()
	}
	if s, ok := n.Value.(string); ok {
		return fmt.Sprintf("string %q", s)
	}
	if n.Value == nil {
		return "null"
	}
	return fmt.Sprintf("%s %v", n.TypeName(), n.Value)
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
