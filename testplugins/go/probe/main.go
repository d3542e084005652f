// Command probe offers stages that let tests look inside a run: timed
// sleeps for parallelism, a large short-lived allocation for peak memory,
// an Arrow table producer and a zero-copy table consumer, a no-op for
// overhead measurements, and outputs the stage seals itself (sealed.go).
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/sdk/seed"
	"github.com/pipehost/pipehost/sdk/table"
	"github.com/pipehost/pipehost/testplugins/observe"
)

type sayParams struct {
	Bytes int  `param:"bytes" default:"10"`
	Wait  bool `param:"wait" default:"false"`
}

type sleepParams struct {
	Ms    int    `param:"ms" default:"100"`
	Trace string `param:"trace" default:""`
}

type envParams struct {
	Path string `param:"path" doc:"file to write the plugin's environment to, one VAR=value a line"`
}

type allocParams struct {
	MB    int    `param:"mb" default:"200"`
	Trace string `param:"trace" default:""`
}

type tableParams struct {
	Rows  int    `param:"rows" default:"1000"`
	Trace string `param:"trace" default:""`
}

type noParams struct{}

// threadCPU is the calling thread's CPU time in nanoseconds.
func threadCPU() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return ts.Nano()
}

func main() {
	grid := []sdk.Port{sdk.GridPort("out", sdk.F32)}
	optIn := []sdk.Port{{Name: "in", Kind: sdk.GridPort("in", sdk.F32).Kind, DType: sdk.F32, Optional: true},
		{Name: "in2", Kind: sdk.GridPort("in", sdk.F32).Kind, DType: sdk.F32, Optional: true}}
	sdk.Serve(
		sdk.Define(sdk.Spec{Kind: "probe.sleep", Version: "1", Inputs: optIn, Outputs: grid, Concurrent: true,
			Doc: "Sleeps ms milliseconds (honouring cancellation) and records when."},
			func(c *sdk.Context, p sleepParams) error {
				start := observe.Now()
				select {
				case <-time.After(time.Duration(p.Ms) * time.Millisecond):
				case <-c.Done():
					return c.Err()
				}
				return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), StartNs: start, EndNs: observe.Now()})
			}),
		sdk.Define(sdk.Spec{Kind: "probe.gpusleep", Version: "1", Inputs: optIn, Outputs: grid, Concurrent: true,
			Resources: map[string]int{"gpu": 1},
			Doc:       "Like probe.sleep, holding one gpu while it sleeps."},
			func(c *sdk.Context, p sleepParams) error {
				start := observe.Now()
				select {
				case <-time.After(time.Duration(p.Ms) * time.Millisecond):
				case <-c.Done():
					return c.Err()
				}
				return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), StartNs: start, EndNs: observe.Now()})
			}),
		sdk.Define(sdk.Spec{Kind: "probe.env", Version: "1", Inputs: optIn, Outputs: grid, Concurrent: true,
			Doc: "Writes the plugin process's environment to a file."},
			func(c *sdk.Context, p envParams) error {
				return os.WriteFile(p.Path, []byte(strings.Join(os.Environ(), "\n")+"\n"), 0o644)
			}),
		sdk.Define(sdk.Spec{Kind: "probe.serial", Version: "1", Inputs: optIn, Outputs: grid,
			Doc: "Like probe.sleep, but one run per process at a time (no concurrent runs)."},
			func(c *sdk.Context, p sleepParams) error {
				start := observe.Now()
				time.Sleep(time.Duration(p.Ms) * time.Millisecond)
				return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), StartNs: start, EndNs: observe.Now()})
			}),
		sdk.Define(sdk.Spec{Kind: "probe.alloc", Version: "1", Concurrent: true,
			Doc: "Allocates and touches mb MiB, then frees it, within a few tens of ms."},
			func(c *sdk.Context, p allocParams) error {
				start := observe.Now()
				buf := make([]byte, p.MB<<20)
				for i := 0; i < len(buf); i += 4096 {
					buf[i] = 1
				}
				buf = nil
				return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), StartNs: start, EndNs: observe.Now()})
			}),
		sdk.Define(sdk.Spec{Kind: "probe.table", Version: "1", Concurrent: true,
			Doc:     "Writes an Arrow table (id int64, x float64) of seeded rows.",
			Outputs: []sdk.Port{sdk.TablePort("rows")}},
			func(c *sdk.Context, p tableParams) error {
				schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}, {Name: "x", Type: arrow.PrimitiveTypes.Float64}}, nil)
				b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
				defer b.Release()
				rng := seed.New(c.Seed())
				var sum float64
				for i := 0; i < p.Rows; i++ {
					x := rng.Float64()
					sum += x
					b.Field(0).(*array.Int64Builder).Append(int64(i))
					b.Field(1).(*array.Float64Builder).Append(x)
				}
				rec := b.NewRecordBatch()
				defer rec.Release()
				if err := table.Write(c, "rows", schema, rec); err != nil {
					return err
				}
				return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), Outputs: map[string]float64{"rows": sum}})
			}),
		sdk.Define(sdk.Spec{Kind: "probe.tablesum", Version: "1", Concurrent: true,
			Doc:    "Reads a table input zero-copy and sums column x.",
			Inputs: []sdk.Port{sdk.TablePort("rows")}},
			func(c *sdk.Context, p tableParams) error {
				r, err := table.Read(c, "rows")
				if err != nil {
					return err
				}
				defer r.Close()
				var sum float64
				n := 0
				for i := 0; i < r.NumRecords(); i++ {
					rec, err := r.RecordBatch(i)
					if err != nil {
						return err
					}
					col, ok := rec.Column(1).(*array.Float64)
					if !ok {
						return fmt.Errorf("column x is %s", rec.Column(1).DataType())
					}
					for _, v := range col.Float64Values() {
						sum += v
					}
					n += int(rec.NumRows())
				}
				c.Metric("rows", float64(n))
				return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), Inputs: map[string]float64{"rows": sum}, Extra: map[string]any{"n": n}})
			}),
		sdk.Define(sdk.Spec{Kind: "probe.spans", Version: "1", Concurrent: true,
			Doc: "Reports nested timed spans: outer (inner 20 ms), then tail."},
			func(c *sdk.Context, _ noParams) error {
				end := c.Timed("outer")
				time.Sleep(5 * time.Millisecond)
				inner := c.Timed("inner")
				time.Sleep(20 * time.Millisecond)
				inner()
				end()
				defer c.Timed("tail")()
				c.Progress(0.5, "half way")
				c.Infof("spans done")
				return nil
			}),
		sdk.Define(sdk.Spec{Kind: "probe.work", Version: "1", Inputs: optIn, Outputs: grid, Concurrent: true,
			Doc: "Burns ms milliseconds of CPU time on one thread (calibrated by the thread's CPU clock)."},
			func(c *sdk.Context, p sleepParams) error {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				start := threadCPU()
				x := uint64(1)
				for threadCPU()-start < int64(p.Ms)*1e6 {
					for i := 0; i < 1000; i++ {
						x = x*6364136223846793005 + 1442695040888963407
					}
				}
				c.Metric("x", float64(x>>40))
				return nil
			}),
		sdk.Define(sdk.Spec{Kind: "probe.noop", Version: "1", Concurrent: true, Doc: "Does nothing."},
			func(c *sdk.Context, _ noParams) error { return nil }),
		sdk.Define(sdk.Spec{Kind: "probe.say", Version: "1", Concurrent: true,
			Doc: "Logs one line of bytes bytes (x, then its length), then waits for cancellation when wait is set."},
			func(c *sdk.Context, p sayParams) error {
				c.Infof("%s%d", strings.Repeat("x", p.Bytes), p.Bytes)
				if p.Wait {
					<-c.Done()
					return c.Err()
				}
				return nil
			}),
		sealedBlob(), sealedTable(), blobSum(),
	)
}
