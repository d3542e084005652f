package sdk_test

// The Go SDK's own tests. Each stage runs through package sdktest: the same
// Run path as a plugin under the host, on real memfds the kernel seals.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"golang.org/x/sys/unix"

	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/sdk/sdktest"
	"github.com/pipehost/pipehost/sdk/table"
	"github.com/pipehost/pipehost/shm"
)

type allParams struct {
	N     int     `param:"n" default:"3" doc:"a count"`
	Small int8    `param:"small" default:"-2"`
	Rate  float32 `param:"rate" default:"0.25"`
	On    bool    `param:"on" default:"true"`
	Label string  `param:"label" doc:"required: no default"`
}

// echoParams reports every decoded param back as a log line.
var echoParams = sdk.Define(sdk.Spec{Kind: "test.params", Version: "1"},
	func(c *sdk.Context, p allParams) error {
		c.Infof("n=%d small=%d rate=%g on=%v label=%s", p.N, p.Small, p.Rate, p.On, p.Label)
		return nil
	})

func TestParamsDefaultsAndValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		params map[string]any
		want   string
	}{
		{"defaults", map[string]any{"label": "x"}, "n=3 small=-2 rate=0.25 on=true label=x"},
		{"given", map[string]any{"label": "y", "n": 7, "small": int64(100), "rate": 2.5, "on": false}, "n=7 small=100 rate=2.5 on=false label=y"},
		{"int for a float", map[string]any{"label": "z", "rate": 4}, "n=3 small=-2 rate=4 on=true label=z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := sdktest.Run(echoParams, sdktest.Options{Params: tc.params})
			if err != nil {
				t.Fatal(err)
			}
			defer res.Close()
			if len(res.Logs) != 1 || res.Logs[0].Message != tc.want || res.Logs[0].Level != sdk.LevelInfo {
				t.Fatalf("logs %+v, want one info line %q", res.Logs, tc.want)
			}
		})
	}
}

func TestParamsRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		params map[string]any
		want   string
	}{
		{"required missing", map[string]any{}, `param "label" is required`},
		{"wrong type", map[string]any{"label": "x", "n": "three"}, `param "n": expected an integer, got string "three"`},
		{"overflow", map[string]any{"label": "x", "small": 300}, `param "small": 300 does not fit in int8`},
		{"float32 overflow", map[string]any{"label": "x", "rate": 1e300}, `param "rate": 1e+300 does not fit in float32`},
		{"bool for a string", map[string]any{"label": true}, `param "label": expected a string, got boolean true`},
		{"unknown name", map[string]any{"label": "x", "octaves": 2}, `no param "octaves" (params: n, small, rate, on, label)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := sdktest.Run(echoParams, sdktest.Options{Params: tc.params})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			if res != nil && len(res.Logs) != 0 {
				t.Fatalf("the stage ran with refused params: %+v", res.Logs)
			}
		})
	}
}

func TestDefineRefusesMalformedSpecs(t *testing.T) {
	type badDefault struct {
		N int8 `param:"n" default:"1000"`
	}
	type badField struct {
		M map[string]int `param:"m"`
	}
	for _, tc := range []struct {
		name   string
		define func()
		want   string
	}{
		{"no version", func() {
			sdk.Define(sdk.Spec{Kind: "test.nover"}, func(*sdk.Context, struct{}) error { return nil })
		}, "sdk.Define(test.nover): Spec.Version is empty"},
		{"no kind", func() {
			sdk.Define(sdk.Spec{Version: "1"}, func(*sdk.Context, struct{}) error { return nil })
		}, "Spec.Kind is empty"},
		{"grid without dtype", func() {
			sdk.Define(sdk.Spec{Kind: "test.nodt", Version: "1", Outputs: []sdk.Port{{Name: "out", Kind: sdk.GridKind}}},
				func(*sdk.Context, struct{}) error { return nil })
		}, `grid port "out" has no dtype`},
		{"port without kind", func() {
			sdk.Define(sdk.Spec{Kind: "test.nokind", Version: "1", Outputs: []sdk.Port{{Name: "out"}}},
				func(*sdk.Context, struct{}) error { return nil })
		}, `port "out" has no kind`},
		{"port twice", func() {
			sdk.Define(sdk.Spec{Kind: "test.twice", Version: "1",
				Inputs: []sdk.Port{sdk.GridPort("x", sdk.F32)}, Outputs: []sdk.Port{sdk.GridPort("x", sdk.F32)}},
				func(*sdk.Context, struct{}) error { return nil })
		}, `port name "x" is empty or used twice`},
		{"default out of range", func() {
			sdk.Define(sdk.Spec{Kind: "test.def", Version: "1"}, func(*sdk.Context, badDefault) error { return nil })
		}, `param "n": default "1000": 1000 does not fit in int8`},
		{"unsupported field", func() {
			sdk.Define(sdk.Spec{Kind: "test.field", Version: "1"}, func(*sdk.Context, badField) error { return nil })
		}, `param "m": unsupported field type map[string]int`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), tc.want) {
					t.Fatalf("panic %v, want one containing %q", r, tc.want)
				}
			}()
			tc.define()
		})
	}
}

// seedStage draws four numbers from its stream, into its metrics.
var seedStage = sdk.Define(sdk.Spec{Kind: "test.seed", Version: "1"},
	func(c *sdk.Context, _ struct{}) error {
		c.Metric("seed", float64(c.Seed()))
		r := c.Rand()
		for i := 0; i < 4; i++ {
			c.Infof("%#016x", r.Uint64())
		}
		return nil
	})

// TestSeedsAreTheHosts checks the stage's seed and stream against the
// shared vectors every SDK passes (testdata/seeds.json).
func TestSeedsAreTheHosts(t *testing.T) {
	raw, err := os.ReadFile("../testdata/seeds.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		StageSeeds []struct {
			RunSeed      string   `json:"run_seed"`
			Stage        string   `json:"stage"`
			StageSeed    string   `json:"stage_seed"`
			FirstOutputs []string `json:"first_outputs"`
		} `json:"stage_seeds"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, vec := range v.StageSeeds {
		if vec.Stage == "" {
			continue // an empty name means "test" to the harness
		}
		runSeed, _ := strconv.ParseUint(strings.TrimPrefix(vec.RunSeed, "0x"), 16, 64)
		want, _ := strconv.ParseUint(strings.TrimPrefix(vec.StageSeed, "0x"), 16, 64)
		res, err := sdktest.Run(seedStage, sdktest.Options{Stage: vec.Stage, RunSeed: runSeed})
		if err != nil {
			t.Fatal(err)
		}
		if res.Seed != want {
			t.Errorf("stage %q run seed %#x: seed %#x, want %#x", vec.Stage, runSeed, res.Seed, want)
		}
		for i, out := range vec.FirstOutputs {
			if got := res.Logs[i].Message; got != fmt.Sprintf("%#016x", mustHex(t, out)) {
				t.Errorf("stage %q: draw %d is %s, want %s", vec.Stage, i, got, out)
			}
		}
		res.Close()
		n++
	}
	if n < 3 {
		t.Fatalf("only %d stage-seed vectors", n)
	}
}

func mustHex(t *testing.T, s string) uint64 {
	u, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

type smoothParams struct {
	Strength float64 `param:"strength" default:"0.5"`
}

// smooth is a wrap-aware 4-neighbour mean blended by strength, with a span,
// progress and a metric, the shape of a typical stage.
var smooth = sdk.Define(sdk.Spec{
	Kind: "test.smooth", Version: "1",
	Inputs:  []sdk.Port{sdk.GridPort("in", sdk.F32)},
	Outputs: []sdk.Port{sdk.GridPort("out", sdk.F32), sdk.GridPortAt("half", sdk.F32, 1)},
}, func(c *sdk.Context, p smoothParams) error {
	defer c.Timed("smooth")()
	in, err := sdk.InputGrid[float32](c, "in")
	if err != nil {
		return err
	}
	out, err := sdk.OutputGrid[float32](c, "out")
	if err != nil {
		return err
	}
	half, err := sdk.OutputGrid[float32](c, "half")
	if err != nil {
		return err
	}
	topo, err := c.Topology()
	if err != nil {
		return err
	}
	g := topo.Grid()
	end := c.Timed("pass")
	for i, v := range in.Data {
		var sum float32
		for _, j := range g.Neighbors4(i) {
			sum += in.Data[j]
		}
		out.Data[i] = v + float32(p.Strength)*(sum/4-v)
	}
	end()
	for y := 0; y < half.Height; y++ {
		for x := 0; x < half.Width; x++ {
			half.Set(x, y, in.At(2*x, 2*y))
		}
	}
	c.Metric("cells", float64(len(out.Data)))
	c.Progress(1, "done")
	return nil
})

func TestGridInputOutputAndReports(t *testing.T) {
	const w, h = 16, 8
	in := make([]float32, w*h)
	for i := range in {
		in[i] = float32(i % 5)
	}
	res, err := sdktest.Run(smooth, sdktest.Options{
		Topology: "torus", Width: w, Height: h, Levels: 2,
		Params: map[string]any{"strength": 1.0}, Inputs: map[string]any{"in": in},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	out, err := sdktest.Grid[float32](res, "out")
	if err != nil {
		t.Fatal(err)
	}
	// Torus: the neighbours of (0,0) wrap to (w-1,0) and (0,h-1).
	for _, xy := range [][2]int{{0, 0}, {w - 1, h - 1}, {5, 3}} {
		x, y := xy[0], xy[1]
		at := func(x, y int) float32 { return in[((y+h)%h)*w+(x+w)%w] }
		want := (at(x-1, y) + at(x+1, y) + at(x, y-1) + at(x, y+1)) / 4
		if got := out.At(x, y); got != want {
			t.Errorf("out(%d,%d) = %g, want %g", x, y, got, want)
		}
	}
	half, err := sdktest.Grid[float32](res, "half")
	if err != nil {
		t.Fatal(err)
	}
	if half.Width != w/2 || half.Height != h/2 || half.Level != 1 || half.At(3, 2) != in[4*w+6] {
		t.Errorf("half: %dx%d level %d, (3,2)=%g", half.Width, half.Height, half.Level, half.At(3, 2))
	}
	for _, port := range []string{"out", "half"} {
		if !res.Sealed(port) {
			t.Errorf("output %q is not write-sealed", port)
		}
	}
	if len(res.Spans) != 2 || res.Spans[0].Name != "pass" || res.Spans[1].Name != "smooth" ||
		res.Spans[0].Parent != res.Spans[1].ID || res.Spans[1].Parent != 0 {
		t.Errorf("spans %+v, want pass nested in smooth", res.Spans)
	}
	if res.Metrics["cells"] != w*h {
		t.Errorf("metrics %v", res.Metrics)
	}
	if n := len(res.Progress); n == 0 || res.Progress[n-1].Fraction != 1 {
		t.Errorf("progress %+v", res.Progress)
	}
	// Outputs come back read-only: a write faults.
	if err := writeFaults(func() { out.Data[0] = 1 }); err != nil {
		t.Error(err)
	}
}

// writeFaults reports an error unless f faults on a write.
func writeFaults(f func()) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if recover() == nil {
			err = errors.New("the write did not fault")
		}
	}()
	f()
	return nil
}

func TestInputsAreSealedReadOnly(t *testing.T) {
	st := sdk.Define(sdk.Spec{Kind: "test.writeinput", Version: "1", Inputs: []sdk.Port{sdk.GridPort("in", sdk.F32)}},
		func(c *sdk.Context, _ struct{}) error {
			in, err := sdk.InputGrid[float32](c, "in")
			if err != nil {
				return err
			}
			return writeFaults(func() { in.Data[0] = 42 })
		})
	in := make([]float32, 64*32)
	res, err := sdktest.Run(st, sdktest.Options{Inputs: map[string]any{"in": in}})
	if err != nil {
		t.Fatal(err)
	}
	res.Close()
}

func TestInputErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inputs map[string]any
		want   string
	}{
		{"missing", nil, `input "in" is required`},
		{"wrong dtype", map[string]any{"in": make([]float64, 64*32)}, `the port holds f32, the given slice f64`},
		{"wrong size", map[string]any{"in": make([]float32, 10)}, `10 elements given, the 64x32 grid of level 0 has 2048`},
		{"unknown port", map[string]any{"in": make([]float32, 64*32), "extra": []byte{1}}, `no input port "extra" (it has: in)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sdktest.Run(smooth, sdktest.Options{Levels: 2, Inputs: tc.inputs})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

var errBoom = errors.New("boom")

func TestStageErrors(t *testing.T) {
	failing := sdk.Define(sdk.Spec{Kind: "test.fail", Version: "1", Outputs: []sdk.Port{sdk.GridPort("out", sdk.F32)}},
		func(c *sdk.Context, _ struct{}) error {
			c.Warnf("about to fail")
			return fmt.Errorf("cell 3: %w", errBoom)
		})
	res, err := sdktest.Run(failing, sdktest.Options{})
	if !errors.Is(err, errBoom) || err.Error() != "cell 3: boom" {
		t.Fatalf("error %v, want the stage's own", err)
	}
	if res == nil || len(res.Logs) != 1 || res.Logs[0].Level != sdk.LevelWarn || len(res.Outputs()) != 0 {
		t.Fatalf("result of a failed run: %+v", res)
	}

	panicking := sdk.Define(sdk.Spec{Kind: "test.panic", Version: "1"},
		func(c *sdk.Context, _ struct{}) error { panic("nil map") })
	if _, err := sdktest.Run(panicking, sdktest.Options{}); err == nil || err.Error() != "stage panicked: nil map" {
		t.Fatalf("panic: error %v", err)
	}
}

func TestCancellation(t *testing.T) {
	waits := sdk.Define(sdk.Spec{Kind: "test.wait", Version: "1"},
		func(c *sdk.Context, _ struct{}) error {
			<-c.Done()
			return c.Err()
		})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := sdktest.Run(waits, sdktest.Options{Context: ctx}); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

// TestKeptWritableMappingFails is the hand-off rule: a stage that leaves a
// writable mapping of its output after returning fails, as under the host,
// because the kernel refuses F_SEAL_WRITE.
func TestKeptWritableMappingFails(t *testing.T) {
	var kept []byte
	st := sdk.Define(sdk.Spec{Kind: "test.keep", Version: "1", Outputs: []sdk.Port{sdk.GridPort("out", sdk.F32)}},
		func(c *sdk.Context, _ struct{}) error {
			// A second, private mapping of the output's memfd, the way
			// native code that maps the fd itself would leave one.
			f, err := openMemfd("keeper.out")
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			kept, err = unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			return err
		})
	_, err := sdktest.Run(st, sdktest.Options{Stage: "keeper"})
	if kept == nil {
		t.Fatal("the stage did not map its output")
	}
	defer unix.Munmap(kept)
	if !errors.Is(err, shm.ErrWritableMapping) || !strings.Contains(err.Error(), `stage "keeper" kept a writable mapping of its output "out"`) {
		t.Fatalf("error %v, want a kept writable mapping", err)
	}

	// The SDK's own writable view is unmapped before the Result: no error.
	clean := sdk.Define(sdk.Spec{Kind: "test.clean", Version: "1", Outputs: []sdk.Port{sdk.GridPort("out", sdk.F32)}},
		func(c *sdk.Context, _ struct{}) error {
			out, err := sdk.OutputGrid[float32](c, "out")
			if err == nil {
				out.Data[0] = 1
			}
			return err
		})
	res, err := sdktest.Run(clean, sdktest.Options{Stage: "keeper"})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	if g, _ := sdktest.Grid[float32](res, "out"); g.Data[0] != 1 || !res.Sealed("out") {
		t.Fatal("clean stage's output not written or not sealed")
	}
}

// openMemfd reopens read-write the memfd named name among this process's
// descriptors (outputs are named "<stage>.<port>").
func openMemfd(name string) (*os.File, error) {
	fds, _ := filepath.Glob("/proc/self/fd/*")
	for _, p := range fds {
		if link, err := os.Readlink(p); err == nil && strings.HasPrefix(link, "/memfd:"+name+" ") {
			return os.OpenFile(p, os.O_RDWR, 0)
		}
	}
	return nil, fmt.Errorf("no memfd named %q", name)
}

func TestDynamicOutputs(t *testing.T) {
	st := sdk.Define(sdk.Spec{Kind: "test.dynamic", Version: "1",
		Inputs:  []sdk.Port{sdk.BlobPort("seed")},
		Outputs: []sdk.Port{sdk.BlobPort("blob"), sdk.BlobPort("stream"), sdk.TablePort("rows")}},
		func(c *sdk.Context, _ struct{}) error {
			src, info, err := c.InputBytes("seed")
			if err != nil {
				return err
			}
			if info.Kind != sdk.BlobKind || info.Nbytes != len(src) {
				return fmt.Errorf("input info %+v", info)
			}
			b, err := c.NewBlob("blob", 5)
			if err != nil {
				return err
			}
			copy(b, src)
			w, err := c.OutputWriter("stream")
			if err != nil {
				return err
			}
			if _, err := io.WriteString(w, strings.Repeat("ab", 3000)); err != nil {
				return err
			}
			ids := array.NewInt64Builder(memory.DefaultAllocator)
			defer ids.Release()
			ids.AppendValues([]int64{3, 1, 4}, nil)
			col := ids.NewArray()
			defer col.Release()
			schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}}, nil)
			rec := array.NewRecordBatch(schema, []arrow.Array{col}, 3)
			defer rec.Release()
			return table.Write(c, "rows", schema, rec)
		})
	res, err := sdktest.Run(st, sdktest.Options{Inputs: map[string]any{"seed": []byte("hello")}})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	if got := strings.Join(res.Outputs(), ","); got != "blob,rows,stream" {
		t.Fatalf("outputs %s", got)
	}
	for _, port := range res.Outputs() {
		if !res.Sealed(port) {
			t.Errorf("%s not sealed", port)
		}
	}
	if b, _ := res.Bytes("blob"); string(b) != "hello" {
		t.Errorf("blob %q", b)
	}
	if b, _ := res.Bytes("stream"); string(b) != strings.Repeat("ab", 3000) {
		t.Errorf("stream: %d bytes", len(b))
	}
	raw, _ := res.Bytes("rows")
	if info, _ := res.Info("rows"); info.Format != sdk.ArrowIPC || info.Kind != sdk.TableKind {
		t.Errorf("rows info %+v", info)
	}
	r, err := ipc.NewFileReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rec, err := r.RecordBatch(0)
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.Column(0).(*array.Int64).Int64Values(); fmt.Sprint(got) != "[3 1 4]" {
		t.Errorf("rows %v", got)
	}
}

func TestTopologyAndLevels(t *testing.T) {
	st := sdk.Define(sdk.Spec{Kind: "test.topo", Version: "1"},
		func(c *sdk.Context, _ struct{}) error {
			topo, err := c.Topology()
			if err != nil {
				return err
			}
			c.Infof("%s %dx%d", topo.Kind(), topo.Width(), topo.Height())
			for _, l := range c.Levels() {
				c.Infof("level %d %dx%d", l.Level, l.Width, l.Height)
			}
			return nil
		})
	res, err := sdktest.Run(st, sdktest.Options{Topology: "sphere", Width: 36, Height: 18, Levels: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	var got []string
	for _, l := range res.Logs {
		got = append(got, l.Message)
	}
	want := "sphere 36x18|level 0 36x18|level 1 18x9|level 2 10x5"
	if strings.Join(got, "|") != want {
		t.Fatalf("got %q, want %q", strings.Join(got, "|"), want)
	}
}
