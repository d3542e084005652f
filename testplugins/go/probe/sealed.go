package main

// Dynamic outputs the stage seals itself before handing them over (the
// host accepts a segment that already carries F_SEAL_WRITE), and a blob
// consumer to read them.

import (
	"bytes"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/pipehost/pipehost/sdk"
	"github.com/pipehost/pipehost/sdk/seed"
	"github.com/pipehost/pipehost/shm"
	"github.com/pipehost/pipehost/testplugins/observe"
)

type sealedBlobParams struct {
	N     int    `param:"n" default:"1000"`
	Trace string `param:"trace" default:""`
}

// sealedSegment makes a segment of len(b) bytes holding b, unmaps it and
// seals it with F_SEAL_WRITE|F_SEAL_SEAL, as a plugin that owns its memory
// would.
func sealedSegment(name string, fill func([]byte)) func(n int) (*shm.Segment, error) {
	return func(n int) (*shm.Segment, error) {
		seg, err := shm.Create(name, int64(n))
		if err != nil {
			return nil, err
		}
		m, err := seg.MapRW()
		if err != nil {
			seg.Close()
			return nil, err
		}
		fill(m.Bytes())
		if err := m.Unmap(); err != nil {
			seg.Close()
			return nil, err
		}
		if err := seg.SealWrite(); err != nil {
			seg.Close()
			return nil, err
		}
		return seg, nil
	}
}

// adoptSealed hands seg over and records the seals it left with.
func adoptSealed(c *sdk.Context, port string, seg *shm.Segment) error {
	seals, err := seg.Seals()
	if err != nil {
		seg.Close()
		return err
	}
	c.Metric("seals", float64(seals))
	return c.AdoptOutput(port, seg)
}

func sealedBlob() sdk.Stage {
	return sdk.Define(sdk.Spec{Kind: "probe.sealedblob", Version: "1", Concurrent: true,
		Doc:     "Writes n bytes (i*7 mod 251) into its own memfd, seals it and hands it over as a blob.",
		Outputs: []sdk.Port{sdk.BlobPort("out")}},
		func(c *sdk.Context, p sealedBlobParams) error {
			var sum float64
			seg, err := sealedSegment(c.Stage()+".out", func(b []byte) {
				for i := range b {
					b[i] = byte(i * 7 % 251)
					sum += float64(b[i])
				}
			})(p.N)
			if err != nil {
				return err
			}
			c.Metric("sum", sum)
			if err := adoptSealed(c, "out", seg); err != nil {
				return err
			}
			return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), Outputs: map[string]float64{"out": sum}})
		})
}

func sealedTable() sdk.Stage {
	return sdk.Define(sdk.Spec{Kind: "probe.sealedtable", Version: "1", Concurrent: true,
		Doc:     "Writes the table of probe.table into its own memfd, seals it and hands it over.",
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
			var file bytes.Buffer
			fw, err := ipc.NewFileWriter(&file, ipc.WithSchema(schema))
			if err != nil {
				return err
			}
			if err := fw.Write(rec); err != nil {
				return err
			}
			if err := fw.Close(); err != nil {
				return err
			}
			seg, err := sealedSegment(c.Stage()+".rows", func(dst []byte) { copy(dst, file.Bytes()) })(file.Len())
			if err != nil {
				return err
			}
			if err := adoptSealed(c, "rows", seg); err != nil {
				return err
			}
			return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), Outputs: map[string]float64{"rows": sum}})
		})
}

func blobSum() sdk.Stage {
	return sdk.Define(sdk.Spec{Kind: "probe.blobsum", Version: "1", Concurrent: true,
		Doc:    "Sums the bytes of a blob input.",
		Inputs: []sdk.Port{sdk.BlobPort("in")}},
		func(c *sdk.Context, p sealedBlobParams) error {
			b, h, err := c.InputBytes("in")
			if err != nil {
				return err
			}
			if h.Nbytes != len(b) {
				return fmt.Errorf("input in: handle says %d bytes, view has %d", h.Nbytes, len(b))
			}
			var sum float64
			for _, v := range b {
				sum += float64(v)
			}
			c.Metric("sum", sum)
			c.Metric("n", float64(len(b)))
			return observe.Append(p.Trace, observe.Record{Stage: c.Stage(), Kind: c.Kind(), Inputs: map[string]float64{"in": sum},
				Extra: map[string]any{"n": len(b)}})
		})
}
