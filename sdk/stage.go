// Package sdk is the Go SDK for pipehost stage plugins.
//
// A plugin is a program whose main registers one or more stage kinds and
// calls Serve:
//
//	type Params struct {
//		Octaves int     `param:"octaves" default:"6" doc:"noise octaves"`
//		Gain    float64 `param:"gain" default:"0.5"`
//	}
//
//	func main() {
//		sdk.Serve(sdk.Define(sdk.Spec{
//			Kind:    "terrain.fbm",
//			Version: "1.0.0",
//			Outputs: []sdk.Port{sdk.GridPort("height", sdk.F32)},
//		}, func(c *sdk.Context, p Params) error {
//			out, err := sdk.OutputGrid[float32](c, "height")
//			...
//		}))
//	}
//
// The SDK speaks the go-plugin handshake, answers Describe, decodes params
// into the author's struct, maps inputs read-only and outputs read-write,
// and reports progress, logs and timed spans to the host.
package sdk

import (
	"fmt"
	"reflect"
	"strings"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/sdk/internal/paramconv"
)

// Port declares one input or output of a stage.
type Port struct {
	Name string
	Kind PortKind
	// DType and Level apply to grids.
	DType DType
	Level int
	// Optional inputs may be left unwired in a pipeline.
	Optional bool
	Doc      string
}

// GridPort declares a grid port at the native resolution.
func GridPort(name string, dt DType) Port {
	return Port{Name: name, Kind: GridKind, DType: dt}
}

// GridPortAt declares a grid port at a pyramid level (1 = half resolution).
func GridPortAt(name string, dt DType, level int) Port {
	return Port{Name: name, Kind: GridKind, DType: dt, Level: level}
}

// TablePort declares an Arrow table port.
func TablePort(name string) Port {
	return Port{Name: name, Kind: TableKind}
}

// BlobPort declares an opaque byte port.
func BlobPort(name string) Port {
	return Port{Name: name, Kind: BlobKind}
}

// Spec describes a stage kind.
type Spec struct {
	// Kind is the dotted, globally unique stage kind, e.g. "terrain.fbm".
	Kind string
	// Version of the stage's behaviour (required); bump it when outputs
	// change for the same inputs: it is part of the cache key, so results
	// of the old code are not reused.
	Version string
	Doc     string
	Inputs  []Port
	Outputs []Port
	// Concurrent lets the host run several instances at once in one process.
	Concurrent bool
	// Threads the stage keeps busy (scheduling hint).
	Threads int
	// Resources the stage holds while running, e.g. {"gpu": 1}.
	Resources map[string]int
}

// Stage is a registered stage kind; build one with Define.
type Stage struct {
	desc   *pb.StageDescriptor
	decode func(map[string]*pb.Value) (reflect.Value, error)
	run    func(*Context, reflect.Value) error
}

// Kind is the stage kind, as given in its Spec.
func (s Stage) Kind() string { return s.desc.GetKind() }

// Define registers a stage kind whose params are the exported fields of P
// tagged `param:"name"`, with optional `default:"..."` (no default: the
// param is required) and `doc:"..."`. Field types: bool, ints, floats,
// string. Define panics on a malformed Spec or P: that is a programming
// error the author sees on the first run.
func Define[P any](spec Spec, run func(c *Context, p P) error) Stage {
	if spec.Kind == "" {
		panic("sdk.Define: Spec.Kind is empty")
	}
	if strings.TrimSpace(spec.Version) == "" {
		panic(fmt.Sprintf("sdk.Define(%s): Spec.Version is empty: give the stage a version, e.g. Version: \"1.0.0\", "+
			"and bump it whenever its outputs change for the same inputs (it is part of the cache key)", spec.Kind))
	}
	var zero P
	pt := reflect.TypeOf(zero)
	fields, specs, err := paramFields(pt)
	if err != nil {
		panic(fmt.Sprintf("sdk.Define(%s): %v", spec.Kind, err))
	}
	desc := &pb.StageDescriptor{
		Kind:    spec.Kind,
		Version: spec.Version,
		Doc:     spec.Doc,
		Params:  specs,
		Capabilities: &pb.Capabilities{
			ConcurrentRuns: spec.Concurrent,
			Threads:        uint32(max(spec.Threads, 0)),
		},
	}
	for name, n := range spec.Resources {
		desc.Capabilities.Resources = append(desc.Capabilities.Resources, &pb.ResourceRequest{Name: name, Count: uint32(n)})
	}
	seen := map[string]bool{}
	for _, ports := range []struct {
		list []Port
		dst  *[]*pb.Port
	}{{spec.Inputs, &desc.Inputs}, {spec.Outputs, &desc.Outputs}} {
		for _, p := range ports.list {
			if p.Name == "" || seen[p.Name] {
				panic(fmt.Sprintf("sdk.Define(%s): port name %q is empty or used twice", spec.Kind, p.Name))
			}
			seen[p.Name] = true
			switch p.Kind {
			case GridKind, TableKind, BlobKind:
			default:
				panic(fmt.Sprintf("sdk.Define(%s): port %q has no kind: declare it with GridPort, TablePort or BlobPort", spec.Kind, p.Name))
			}
			if p.Kind == GridKind && dtypeNames[p.DType] == "" {
				panic(fmt.Sprintf("sdk.Define(%s): grid port %q has no dtype", spec.Kind, p.Name))
			}
			*ports.dst = append(*ports.dst, &pb.Port{
				Name: p.Name, Kind: pb.PortKind(p.Kind), Dtype: p.DType.wire(), Level: uint32(p.Level), Optional: p.Optional, Doc: p.Doc,
			})
		}
	}
	return Stage{
		desc: desc,
		decode: func(values map[string]*pb.Value) (reflect.Value, error) {
			v := reflect.New(pt).Elem()
			for _, f := range fields {
				val, ok := values[f.name]
				if !ok {
					if f.spec.Default == nil {
						return v, fmt.Errorf("param %q is required", f.name)
					}
					val = f.spec.Default
				}
				if err := paramconv.Set(v.Field(f.index), val); err != nil {
					return v, fmt.Errorf("param %q: %w", f.name, err)
				}
			}
			return v, nil
		},
		run: func(c *Context, v reflect.Value) error { return run(c, v.Interface().(P)) },
	}
}

type paramField struct {
	name  string
	index int
	spec  *pb.ParamSpec
}

func paramFields(t reflect.Type) ([]paramField, []*pb.ParamSpec, error) {
	if t == nil {
		return nil, nil, nil
	}
	if t.Kind() != reflect.Struct {
		return nil, nil, fmt.Errorf("params type %s is not a struct", t)
	}
	var fields []paramField
	var specs []*pb.ParamSpec
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, ok := sf.Tag.Lookup("param")
		if !ok || !sf.IsExported() {
			continue
		}
		spec := &pb.ParamSpec{Name: name, Doc: sf.Tag.Get("doc")}
		switch sf.Type.Kind() {
		case reflect.Bool:
			spec.Type = pb.ParamType_PARAM_TYPE_BOOL
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			spec.Type = pb.ParamType_PARAM_TYPE_INT
		case reflect.Float32, reflect.Float64:
			spec.Type = pb.ParamType_PARAM_TYPE_FLOAT
		case reflect.String:
			spec.Type = pb.ParamType_PARAM_TYPE_STRING
		default:
			return nil, nil, fmt.Errorf("param %q: unsupported field type %s", name, sf.Type)
		}
		if def, ok := sf.Tag.Lookup("default"); ok {
			v, err := paramconv.ParseDefault(spec.Type, def)
			if err != nil {
				return nil, nil, fmt.Errorf("param %q: default %q: %w", name, def, err)
			}
			// Reject defaults the field cannot hold, at definition time.
			if err := paramconv.Set(reflect.New(sf.Type).Elem(), v); err != nil {
				return nil, nil, fmt.Errorf("param %q: default %q: %w", name, def, err)
			}
			spec.Default = v
		}
		fields = append(fields, paramField{name: name, index: i, spec: spec})
		specs = append(specs, spec)
	}
	return fields, specs, nil
}

// kindList is used in error messages.
func kindList(stages []Stage) string {
	var kinds []string
	for _, s := range stages {
		kinds = append(kinds, s.desc.Kind)
	}
	return strings.Join(kinds, ", ")
}
