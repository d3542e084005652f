// Package sdktest runs a Go stage in-process, the way a unit test wants it,
// on the same memory the host would give it: every input is a real memfd
// sealed F_SEAL_WRITE|F_SEAL_SEAL before the stage sees it, every grid
// output a pre-allocated memfd the stage writes, and after the stage
// returns each output is write-sealed exactly as the host seals it, so a
// stage that keeps a writable mapping fails here as it would in a run.
// Params are checked and defaulted, the seed derived from the run seed and
// the stage name, and the topology and grid pyramid built, all as the host
// does them.
//
//	res, err := sdktest.Run(stage, sdktest.Options{
//		Topology: "torus", Width: 64, Height: 32,
//		Params:   map[string]any{"strength": 1.0},
//		Inputs:   map[string]any{"in": heights}, // a []float32 of Width*Height
//	})
//	if err != nil { ... }
//	defer res.Close()
//	out, err := sdktest.Grid[float32](res, "out") // read-only view
package sdktest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"unsafe"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/sdk/internal/harness"
	"github.com/pipehost/pipehost/sdk/seed"
	"github.com/pipehost/pipehost/shm"
	"github.com/pipehost/pipehost/topology"
)

// Options describe one run of a stage. The zero value is a 64×32 torus with
// one level, run seed 0 and stage name "test".
type Options struct {
	// Stage is the instance name (as in a pipeline config); with RunSeed it
	// gives the stage's seed, as the host derives it.
	Stage   string
	RunSeed uint64
	RunID   string
	Attempt int
	// Topology is "sphere", "cylinder", "torus" or "plane"; Width × Height
	// the native grid; Levels the pyramid's depth counting the native level.
	Topology      string
	Width, Height int
	Levels        int
	// Params by name: bool, any integer, float32/float64 or string. Params
	// left out take their declared defaults; a required one left out, an
	// unknown name or a wrong type fails as the host would fail the config.
	Params map[string]any
	// Inputs by port: a grid port takes a slice of its dtype ([]float32 for
	// F32, ...) of the port level's Width*Height elements, row-major; a
	// table port an Arrow IPC file's bytes, a blob port any []byte.
	Inputs map[string]any
	// Context, when set, is the stage's context (cancel it to test
	// cancellation); context.Background() otherwise.
	Context context.Context
}

// Log is a log line the stage sent.
type Log struct {
	Level   sdk.LogLevel
	Message string
}

// Span is a timed subtask the stage reported; Parent is 0 at the top.
type Span struct {
	ID, Parent     uint64
	Name           string
	StartNs, EndNs int64
}

// Progress is one progress update.
type Progress struct {
	Fraction float64
	Message  string
}

// Result is what a run left: its outputs (sealed, mapped read-only), logs,
// spans, progress and metrics. Close it to unmap and free the outputs.
type Result struct {
	// Seed is the stage seed the run had.
	Seed     uint64
	Logs     []Log
	Spans    []Span
	Progress []Progress
	Metrics  map[string]float64
	// CPUNs and PeakRSS are the stage's stats as the run log records them.
	CPUNs   uint64
	PeakRSS uint64

	outputs map[string]*output
}

type output struct {
	seg    *shm.Segment
	handle *pb.Handle
	m      *shm.Mapping
}

// Run runs stage with opts. The error is the stage's own error (errors.Is
// and errors.As see through it), a param the host would refuse, or an
// output the stage left writable. When the stage ran, the Result holds its
// logs, spans and progress even if it failed (then with no outputs); it is
// nil when the run could not start. A nil error means the stage returned
// nil and every output is sealed.
func Run(stage sdk.Stage, opts Options) (*Result, error) {
	desc, ok := harness.Describe(stage)
	if !ok {
		return nil, errors.New("sdktest.Run: the stage was not built with sdk.Define")
	}
	kind := desc.GetKind()
	o := opts
	if o.Stage == "" {
		o.Stage = "test"
	}
	if o.RunID == "" {
		o.RunID = "sdktest"
	}
	if o.Topology == "" {
		o.Topology = topology.KindTorus
	}
	if o.Width == 0 && o.Height == 0 {
		o.Width, o.Height = 64, 32
	}
	if o.Levels == 0 {
		o.Levels = 1
	}
	if o.Context == nil {
		o.Context = context.Background()
	}
	fail := func(format string, args ...any) (*Result, error) {
		return nil, fmt.Errorf("sdktest: stage %s (%s): %s", o.Stage, kind, fmt.Sprintf(format, args...))
	}
	topo, err := topology.Load(o.Topology, o.Width, o.Height, topology.Options{})
	if err != nil {
		return fail("%v", err)
	}
	levels, err := topology.GridInfos(o.Topology, o.Width, o.Height, o.Levels-1)
	if err != nil {
		return fail("%d levels do not fit a %dx%d %s grid: %v", o.Levels, o.Width, o.Height, o.Topology, err)
	}
	params, err := wireParams(desc, o.Params)
	if err != nil {
		return fail("%v", err)
	}
	req := &pb.RunRequest{
		RunId: o.RunID, Stage: o.Stage, Kind: kind, Params: params,
		Seed: seed.StageSeed(o.RunSeed, o.Stage), Attempt: uint32(o.Attempt),
		Topology: topo.Proto(), Levels: levels,
	}

	// The harness keeps its own descriptor of every segment (as the host
	// does) and hands the Run duplicates, which the Run closes.
	ours := map[string]*output{}
	closeOurs := func() {
		for _, out := range ours {
			out.close()
		}
	}
	inputs, outputs := map[string]*shm.Segment{}, map[string]*shm.Segment{}
	give := func(dst map[string]*shm.Segment, port string, seg *shm.Segment) error {
		dup, err := seg.Dup()
		if err != nil {
			return err
		}
		dst[port] = dup
		return nil
	}
	// abort frees everything made so far when the run cannot start.
	abort := func() {
		closeOurs()
		for _, set := range []map[string]*shm.Segment{inputs, outputs} {
			for _, s := range set {
				s.Close()
			}
		}
	}
	for name := range o.Inputs {
		if findPort(desc.GetInputs(), name) == nil {
			return fail("no input port %q (it has: %s)", name, portNames(desc.GetInputs()))
		}
	}
	segID := uint64(0)
	for _, p := range desc.GetInputs() {
		v, given := o.Inputs[p.GetName()]
		if !given {
			if p.GetOptional() {
				continue
			}
			abort()
			return fail("input %q is required: give Options.Inputs[%q]", p.GetName(), p.GetName())
		}
		segID++
		in, err := sealedInput(o.Stage, p, v, levels, segID)
		if err != nil {
			abort()
			return fail("input %q: %v", p.GetName(), err)
		}
		ours["in:"+p.GetName()] = in
		if err := give(inputs, p.GetName(), in.seg); err != nil {
			abort()
			return fail("input %q: %v", p.GetName(), err)
		}
		req.Inputs = append(req.Inputs, &pb.Binding{Port: p.GetName(), Handle: in.handle, FdToken: segID})
	}
	for _, p := range desc.GetOutputs() {
		if p.GetKind() != pb.PortKind_PORT_KIND_GRID {
			continue // tables and blobs: the stage makes their segments
		}
		segID++
		out, err := gridOutput(o.Stage, p, levels, segID)
		if err != nil {
			abort()
			return fail("output %q: %v", p.GetName(), err)
		}
		ours["out:"+p.GetName()] = out
		if err := give(outputs, p.GetName(), out.seg); err != nil {
			abort()
			return fail("output %q: %v", p.GetName(), err)
		}
		req.Outputs = append(req.Outputs, &pb.Binding{Port: p.GetName(), Handle: out.handle, FdToken: segID})
	}

	res := &Result{Seed: req.Seed, Metrics: map[string]float64{}}
	var dynBindings []*pb.Binding
	send := func(ev *pb.RunEvent) error {
		switch e := ev.GetEvent().(type) {
		case *pb.RunEvent_Log:
			res.Logs = append(res.Logs, Log{Level: sdk.LogLevel(e.Log.GetLevel()), Message: e.Log.GetMessage()})
		case *pb.RunEvent_Span:
			s := e.Span
			res.Spans = append(res.Spans, Span{ID: s.GetId(), Parent: s.GetParentId(), Name: s.GetName(), StartNs: s.GetStartNs(), EndNs: s.GetEndNs()})
		case *pb.RunEvent_Progress:
			res.Progress = append(res.Progress, Progress{Fraction: e.Progress.GetFraction(), Message: e.Progress.GetMessage()})
		case *pb.RunEvent_Result:
			for k, v := range e.Result.GetMetrics() {
				res.Metrics[k] = v
			}
			res.CPUNs = e.Result.GetStats().GetCpuNs()
			res.PeakRSS = e.Result.GetStats().GetPeakRssBytes()
			dynBindings = e.Result.GetDynamicOutputs()
		}
		return nil
	}
	dyn, runErr := harness.Run(o.Context, stage, req, inputs, outputs, send)
	for _, in := range req.GetInputs() {
		ours["in:"+in.GetPort()].close()
		delete(ours, "in:"+in.GetPort())
	}
	if runErr != nil {
		closeOurs()
		return res, runErr
	}

	res.outputs = map[string]*output{}
	for _, p := range desc.GetOutputs() {
		if out, ok := ours["out:"+p.GetName()]; ok {
			res.outputs[p.GetName()] = out
		}
	}
	for _, d := range dyn {
		var h *pb.Handle
		for _, b := range dynBindings {
			if b.GetFdToken() == d.Token {
				h = b.GetHandle()
			}
		}
		res.outputs[d.Port] = &output{seg: d.Seg, handle: h}
	}
	// Seal every output as the host does when the Result arrives: the
	// kernel refuses while any writable mapping of it is left anywhere.
	for _, name := range sortedKeys(res.outputs) {
		out := res.outputs[name]
		if err := out.seg.SealWrite(); err != nil {
			res.Close()
			if errors.Is(err, shm.ErrWritableMapping) {
				return res, fmt.Errorf("stage %q kept a writable mapping of its output %q after returning, so its bytes "+
					"could still change (the host fails the stage for this): unmap every writable view of an output "+
					"before the stage returns, and do not leave one in a child process or a helper: %w", o.Stage, name, err)
			}
			return res, fmt.Errorf("sdktest: stage %s (%s): output %q: %w", o.Stage, kind, name, err)
		}
	}
	return res, nil
}

// Outputs lists the ports the stage produced.
func (r *Result) Outputs() []string { return sortedKeys(r.outputs) }

// Bytes returns output port's bytes, mapped read-only (writing faults).
// They stay valid until Close.
func (r *Result) Bytes(port string) ([]byte, error) {
	out, ok := r.outputs[port]
	if !ok {
		return nil, fmt.Errorf("sdktest: no output %q (outputs: %s)", port, strings.Join(r.Outputs(), ", "))
	}
	if out.m == nil {
		m, err := out.seg.MapRO()
		if err != nil {
			return nil, fmt.Errorf("sdktest: output %q: %w", port, err)
		}
		out.m = m
	}
	h := out.handle
	return out.m.Bytes()[h.GetOffset() : h.GetOffset()+h.GetNbytes()], nil
}

// Sealed reports whether the kernel holds output port write-sealed.
func (r *Result) Sealed(port string) bool {
	out, ok := r.outputs[port]
	return ok && out.seg.Sealed()
}

// Info describes output port as a consumer would see it.
func (r *Result) Info(port string) (sdk.BufferInfo, error) {
	out, ok := r.outputs[port]
	if !ok {
		return sdk.BufferInfo{}, fmt.Errorf("sdktest: no output %q (outputs: %s)", port, strings.Join(r.Outputs(), ", "))
	}
	h := out.handle
	bi := sdk.BufferInfo{Kind: sdk.PortKind(h.GetKind()), Format: sdk.Format(h.GetFormat()), DType: sdk.DType(h.GetDtype()),
		Level: int(h.GetLevel()), Nbytes: int(h.GetNbytes())}
	for _, s := range h.GetShape() {
		bi.Shape = append(bi.Shape, int(s))
	}
	for _, s := range h.GetStrides() {
		bi.Strides = append(bi.Strides, int(s))
	}
	return bi, nil
}

// Grid returns grid output port as a read-only typed view, valid until
// r.Close.
func Grid[T shm.Elem](r *Result, port string) (sdk.Grid[T], error) {
	b, err := r.Bytes(port)
	if err != nil {
		return sdk.Grid[T]{}, err
	}
	h := r.outputs[port].handle
	if h.GetKind() != pb.PortKind_PORT_KIND_GRID || len(h.GetShape()) != 2 {
		return sdk.Grid[T]{}, fmt.Errorf("sdktest: output %q is not a grid", port)
	}
	if want := shm.DTypeFor[T](); h.GetDtype() != want {
		return sdk.Grid[T]{}, fmt.Errorf("sdktest: output %q holds %s, not %s", port, sdk.DType(h.GetDtype()), sdk.DType(want))
	}
	data, err := shm.View[T](b)
	if err != nil {
		return sdk.Grid[T]{}, fmt.Errorf("sdktest: output %q: %w", port, err)
	}
	return sdk.Grid[T]{Data: data, Width: int(h.GetShape()[1]), Height: int(h.GetShape()[0]), Level: int(h.GetLevel())}, nil
}

// Close unmaps and frees every output. Views from Bytes and Grid are gone
// after it (touching them faults).
func (r *Result) Close() error {
	if r == nil {
		return nil
	}
	var first error
	for _, out := range r.outputs {
		if err := out.close(); err != nil && first == nil {
			first = err
		}
	}
	r.outputs = nil
	return first
}

func (o *output) close() error {
	var err error
	if o.m != nil {
		err = o.m.Unmap()
		o.m = nil
	}
	if o.seg != nil {
		if cerr := o.seg.Close(); err == nil {
			err = cerr
		}
		o.seg = nil
	}
	return err
}

// sealedInput makes the segment of one input, filled and write-sealed.
func sealedInput(stage string, p *pb.Port, v any, levels []*pb.GridInfo, segID uint64) (*output, error) {
	var raw []byte
	var h *pb.Handle
	switch p.GetKind() {
	case pb.PortKind_PORT_KIND_GRID:
		lv, err := levelOf(p, levels)
		if err != nil {
			return nil, err
		}
		dt, b, err := sliceBytes(v)
		if err != nil {
			return nil, err
		}
		if dt != p.GetDtype() {
			return nil, fmt.Errorf("the port holds %s, the given slice %s", sdk.DType(p.GetDtype()), sdk.DType(dt))
		}
		want := uint64(lv.GetWidth()) * uint64(lv.GetHeight())
		if n := uint64(len(b) / shm.DTypeSize(dt)); n != want {
			return nil, fmt.Errorf("%d elements given, the %dx%d grid of level %d has %d", n, lv.GetWidth(), lv.GetHeight(), lv.GetLevel(), want)
		}
		raw = b
		h = shm.GridHandle(segID, uint64(len(b)), 0, dt, uint64(lv.GetHeight()), uint64(lv.GetWidth()), lv.GetLevel())
	case pb.PortKind_PORT_KIND_TABLE, pb.PortKind_PORT_KIND_BLOB:
		b, ok := v.([]byte)
		if !ok {
			return nil, fmt.Errorf("a %s port takes []byte, not %T", sdk.PortKind(p.GetKind()), v)
		}
		raw = b
		n := uint64(len(b))
		h = &pb.Handle{SegmentId: segID, SegmentSize: n, Nbytes: n, Kind: p.GetKind(), Format: pb.Format_FORMAT_RAW}
		if p.GetKind() == pb.PortKind_PORT_KIND_TABLE {
			h.Format = pb.Format_FORMAT_ARROW_IPC
		} else {
			h.Dtype, h.Shape, h.Strides = pb.DType_DTYPE_U8, []uint64{n}, []uint64{1}
		}
	default:
		return nil, fmt.Errorf("port kind %v is not supported", p.GetKind())
	}
	if len(raw) == 0 {
		return nil, errors.New("no bytes given: a segment cannot be empty")
	}
	seg, err := shm.Create(stage+"."+p.GetName(), int64(len(raw)))
	if err != nil {
		return nil, err
	}
	m, err := seg.MapRW()
	if err != nil {
		seg.Close()
		return nil, err
	}
	copy(m.Bytes(), raw)
	if err := m.Unmap(); err != nil {
		seg.Close()
		return nil, err
	}
	if err := seg.SealWrite(); err != nil {
		seg.Close()
		return nil, err
	}
	return &output{seg: seg, handle: h}, nil
}

// gridOutput pre-allocates a grid output's segment, as the host does.
func gridOutput(stage string, p *pb.Port, levels []*pb.GridInfo, segID uint64) (*output, error) {
	lv, err := levelOf(p, levels)
	if err != nil {
		return nil, err
	}
	es := shm.DTypeSize(p.GetDtype())
	if es == 0 {
		return nil, fmt.Errorf("unknown dtype %v", p.GetDtype())
	}
	size := uint64(lv.GetWidth()) * uint64(lv.GetHeight()) * uint64(es)
	seg, err := shm.Create(stage+"."+p.GetName(), int64(size))
	if err != nil {
		return nil, err
	}
	return &output{seg: seg, handle: shm.GridHandle(segID, size, 0, p.GetDtype(), uint64(lv.GetHeight()), uint64(lv.GetWidth()), lv.GetLevel())}, nil
}

func levelOf(p *pb.Port, levels []*pb.GridInfo) (*pb.GridInfo, error) {
	l := int(p.GetLevel())
	if l >= len(levels) {
		return nil, fmt.Errorf("the port is at pyramid level %d but the run has %d level(s): set Options.Levels to at least %d", l, len(levels), l+1)
	}
	return levels[l], nil
}

// sliceBytes views a slice of grid elements as bytes (no copy).
func sliceBytes(v any) (pb.DType, []byte, error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Slice {
		return 0, nil, fmt.Errorf("a grid port takes a slice of its element type, not %T", v)
	}
	var dt pb.DType
	switch rv.Type().Elem().Kind() {
	case reflect.Float32:
		dt = pb.DType_DTYPE_F32
	case reflect.Float64:
		dt = pb.DType_DTYPE_F64
	case reflect.Int8:
		dt = pb.DType_DTYPE_I8
	case reflect.Int16:
		dt = pb.DType_DTYPE_I16
	case reflect.Int32:
		dt = pb.DType_DTYPE_I32
	case reflect.Int64:
		dt = pb.DType_DTYPE_I64
	case reflect.Uint8:
		dt = pb.DType_DTYPE_U8
	case reflect.Uint16:
		dt = pb.DType_DTYPE_U16
	case reflect.Uint32:
		dt = pb.DType_DTYPE_U32
	case reflect.Uint64:
		dt = pb.DType_DTYPE_U64
	default:
		return 0, nil, fmt.Errorf("%T is not a slice of a grid element type", v)
	}
	if rv.Len() == 0 {
		return dt, nil, nil
	}
	n := rv.Len() * int(rv.Type().Elem().Size())
	return dt, unsafe.Slice((*byte)(rv.UnsafePointer()), n), nil
}

// wireParams turns Go values into the wire's, refusing what the host's
// plan would refuse: unknown names and values of the wrong kind. Defaults
// and required params are the SDK's own business, as in a real run.
func wireParams(desc *pb.StageDescriptor, given map[string]any) (map[string]*pb.Value, error) {
	out := map[string]*pb.Value{}
	for _, name := range sortedKeys(given) {
		var spec *pb.ParamSpec
		for _, s := range desc.GetParams() {
			if s.GetName() == name {
				spec = s
			}
		}
		if spec == nil {
			var names []string
			for _, s := range desc.GetParams() {
				names = append(names, s.GetName())
			}
			return nil, fmt.Errorf("no param %q (params: %s)", name, strings.Join(names, ", "))
		}
		v, err := wireValue(given[name])
		if err != nil {
			return nil, fmt.Errorf("param %q: %v", name, err)
		}
		out[name] = v
	}
	return out, nil
}

func wireValue(v any) (*pb.Value, error) {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Bool:
		return &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: rv.Bool()}}, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return &pb.Value{Kind: &pb.Value_IntValue{IntValue: rv.Int()}}, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		u := rv.Uint()
		if u > 1<<63-1 {
			return nil, fmt.Errorf("%d does not fit in a signed 64-bit integer", u)
		}
		return &pb.Value{Kind: &pb.Value_IntValue{IntValue: int64(u)}}, nil
	case reflect.Float32, reflect.Float64:
		return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: rv.Float()}}, nil
	case reflect.String:
		return &pb.Value{Kind: &pb.Value_StringValue{StringValue: rv.String()}}, nil
	}
	return nil, fmt.Errorf("%T is not a param value (bool, integer, float or string)", v)
}

func findPort(ports []*pb.Port, name string) *pb.Port {
	for _, p := range ports {
		if p.GetName() == name {
			return p
		}
	}
	return nil
}

func portNames(ports []*pb.Port) string {
	var names []string
	for _, p := range ports {
		names = append(names, p.GetName())
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
