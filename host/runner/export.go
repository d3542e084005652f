package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"

	"github.com/pipehost/pipehost/host/dataset"
	"github.com/pipehost/pipehost/host/engine"
	"github.com/pipehost/pipehost/host/plan"
	"github.com/pipehost/pipehost/host/runlog"
	"github.com/pipehost/pipehost/internal/atomicfile"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// SavedArtifact is one dataset file of the run.
type SavedArtifact struct {
	dataset.Artifact
	Stage string `json:"stage"`
	Port  string `json:"port"`
}

// datasetDType maps a protocol dtype to the writer's.
var datasetDType = map[pb.DType]dataset.DType{
	pb.DType_DTYPE_F32: dataset.Float32, pb.DType_DTYPE_F64: dataset.Float64,
	pb.DType_DTYPE_I8: dataset.Int8, pb.DType_DTYPE_I16: dataset.Int16, pb.DType_DTYPE_I32: dataset.Int32, pb.DType_DTYPE_I64: dataset.Int64,
	pb.DType_DTYPE_U8: dataset.Uint8, pb.DType_DTYPE_U16: dataset.Uint16, pb.DType_DTYPE_U32: dataset.Uint32, pb.DType_DTYPE_U64: dataset.Uint64,
}

// georef places the run's grid on its surface for the dataset writers.
func (s *Session) georef(level int) dataset.Georef {
	t := s.Plan.Topology
	lv := s.Plan.Levels[level]
	w, h := float64(lv.GetWidth()), float64(lv.GetHeight())
	g := dataset.Georef{WrapX: wrapName(t.GetWrapX()), WrapY: wrapName(t.GetWrapY())}
	switch t.GetKind() {
	case "sphere":
		g.Topology, g.Radius = dataset.Sphere, t.GetRadius()
	case "cylinder":
		// Cells are square on the cylinder's surface: the circumference over
		// the width, along both axes.
		g.Topology = dataset.Cylinder
		px := 2 * math.Pi * t.GetRadius() / w
		g.PixelSize = [2]float64{px, px}
	case "torus":
		g.Topology = dataset.Torus
		g.PixelSize = [2]float64{2 * math.Pi * t.GetRadius() / w, 2 * math.Pi * t.GetMinorRadius() / h}
	default:
		g.Topology = dataset.Plane
		scale := math.Pow(2, float64(level))
		g.PixelSize = [2]float64{scale, scale}
	}
	for i, p := range g.PixelSize {
		if !(p > 0) || math.IsInf(p, 0) {
			g.PixelSize[i] = 1
		}
	}
	return g
}

func wrapName(w pb.Wrap) string {
	switch w {
	case pb.Wrap_WRAP_REPEAT:
		return dataset.WrapRepeat
	case pb.Wrap_WRAP_REFLECT:
		return dataset.WrapReflect
	case pb.Wrap_WRAP_POLE:
		return dataset.WrapPole
	case pb.Wrap_WRAP_CLAMP:
		return dataset.WrapClamp
	}
	return ""
}

// saveDatasets writes every output the config asks to save, in the formats
// it names, plus a PNG preview of each saved raster. Each file is written
// under a temporary name and renamed, so a failure leaves nothing half
// written; a failure is reported per artifact and does not stop the others.
func (s *Session) saveDatasets(res *engine.Result) ([]SavedArtifact, []error) {
	var saved []SavedArtifact
	var errs []error
	var w *dataset.Writer
	open := func() error {
		if w != nil {
			return nil
		}
		if err := os.MkdirAll(s.OutDir(), 0o755); err != nil {
			return err
		}
		var err error
		w, err = dataset.NewWriter(s.OutDir())
		return err
	}
	defer func() {
		if w != nil {
			w.Close()
		}
	}()
	s.previews = map[string]string{}
	prior := priorArtifacts(s.OutDir())
	for _, n := range s.Plan.Nodes {
		r := res.Stages[n.Index]
		for _, sv := range n.Config.Save {
			if r == nil || r.Status != engine.StatusOK {
				continue
			}
			o := r.Outputs[sv.Port]
			if o == nil {
				continue
			}
			if err := open(); err != nil {
				return nil, []error{fmt.Errorf("output directory %s: %w", s.OutDir(), err)}
			}
			arts, err := s.saveOutput(w, prior, n, sv.Port, sv.Formats, o, r.Outputs)
			saved = append(saved, arts...)
			if err != nil {
				errs = append(errs, fmt.Errorf("saving %s.%s: %w", n.Name, sv.Port, err))
			}
		}
	}
	return saved, errs
}

// outputBytes maps an output read-only: its arena segment, or for a cache
// hit the cached bytes loaded (and verified) into a sealed segment.
func (s *Session) outputBytes(o *engine.Output) ([]byte, func(), error) {
	seg := (*shm.Segment)(nil)
	owned := false
	if o.Entry != nil && !o.Entry.Freed() {
		seg = o.Entry.Segment
	} else if o.Cached && s.Cache != nil {
		var err error
		if seg, err = engine.CachedSegment(context.Background(), s.Cache, s.Remote, o, "save"); err != nil {
			return nil, nil, err
		}
		owned = true
	} else {
		return nil, nil, errors.New("its bytes are no longer available")
	}
	if seg.Size() == 0 {
		return nil, func() {}, nil
	}
	m, err := seg.MapRO()
	if err != nil {
		if owned {
			seg.Close()
		}
		return nil, nil, err
	}
	h := o.Handle
	b := m.Bytes()[h.GetOffset() : h.GetOffset()+h.GetNbytes()]
	return b, func() {
		m.Unmap()
		if owned {
			seg.Close()
		}
	}, nil
}

func (s *Session) saveOutput(w *dataset.Writer, prior map[string]dataset.Artifact, n *plan.Node, port string, formats []string, o *engine.Output, siblings map[string]*engine.Output) ([]SavedArtifact, error) {
	base := filepath.Join("data", n.Name+"."+port)
	var out []SavedArtifact
	// put keeps the previous run's file at name when its key matches and its
	// bytes are intact, and otherwise writes it; parts are what the file is
	// made of besides the output's bytes, whose digest is always part of it.
	put := func(name, format string, parts any, write func() (dataset.Artifact, error)) error {
		name = filepath.ToSlash(name)
		key, keyed := artifactKey(s.opts.Version, name, format, o.Digest, handleKey(o), parts)
		keyed = keyed && o.Digest.Hash != "" // no digest (--no-cache): nothing to compare
		a, ok := dataset.Artifact{}, false
		if keyed {
			a, ok = reuse(w, prior, name, key)
		}
		if !ok {
			var err error
			if a, err = write(); err != nil {
				return err
			}
			if keyed {
				a.Key = key
			}
		}
		out = append(out, SavedArtifact{Artifact: a, Stage: n.Name, Port: port})
		return nil
	}
	// The bytes are mapped only when some file must be written.
	var data []byte
	mapped := false
	var releases []func()
	defer func() {
		for i := len(releases) - 1; i >= 0; i-- {
			releases[i]()
		}
	}()
	bytesOf := func() ([]byte, error) {
		if mapped {
			return data, nil
		}
		b, release, err := s.outputBytes(o)
		if err != nil {
			return nil, err
		}
		data, mapped = b, true
		releases = append(releases, release)
		return data, nil
	}
	h := o.Handle
	switch h.GetKind() {
	case pb.PortKind_PORT_KIND_GRID:
		grid := func() (dataset.Grid, error) {
			b, err := bytesOf()
			return dataset.Grid{Data: b, Height: int(h.GetShape()[0]), Width: int(h.GetShape()[1]), DType: datasetDType[h.GetDtype()]}, err
		}
		geo := s.georef(int(h.GetLevel()))
		meta := map[string]string{"PIPEHOST_RUN": s.Config.RunID, "PIPEHOST_STAGE": n.Name, "PIPEHOST_KIND": n.Kind, "PIPEHOST_PORT": port, "PIPEHOST_SHA256": o.Digest.Hash}
		preview := dataset.PreviewOptions{Style: dataset.ShadedRamp}
		// A colour table that cannot be read costs the palette, not the
		// datasets: they are written, the preview falls back, the error is
		// reported.
		var palErr error
		var palDigest any
		if c := siblings[port+"_colors"]; c != nil && c.Handle.GetKind() == pb.PortKind_PORT_KIND_TABLE {
			if pal, err := s.palette(c); err != nil {
				palErr = fmt.Errorf("colour table %s_colors (save it too, e.g. as \"arrow\", so it outlives the run): %w", port, err)
			} else {
				preview = dataset.PreviewOptions{Style: dataset.Palette, Palette: pal}
				palDigest = c.Digest
			}
		}
		for _, f := range formats {
			var err error
			switch f {
			case "relief":
				preview.Style = dataset.Relief
			case "cog", "cog-zstd":
				opt := dataset.COGOptions{Georef: geo, Metadata: meta}
				if f == "cog-zstd" {
					opt.Compression = dataset.Zstd
				}
				err = put(base+".tif", f, []any{geo, meta}, func() (dataset.Artifact, error) {
					g, err := grid()
					if err != nil {
						return dataset.Artifact{}, err
					}
					return w.WriteCOG(base+".tif", g, opt)
				})
			case "npz", "npz-compressed":
				err = put(base+".npz", f, nil, func() (dataset.Artifact, error) {
					g, err := grid()
					if err != nil {
						return dataset.Artifact{}, err
					}
					return w.WriteNPZ(base+".npz", []dataset.NPZMember{{Name: port, Grid: g}}, dataset.NPZOptions{Compress: f == "npz-compressed"})
				})
			default:
				err = fmt.Errorf("format %q cannot hold a grid", f)
			}
			if err != nil {
				return out, err
			}
		}
		name := filepath.Join("previews", n.Name+"."+port+".png")
		err := put(name, "png", []any{preview.Style, palDigest, palErr != nil}, func() (dataset.Artifact, error) {
			g, err := grid()
			if err != nil {
				return dataset.Artifact{}, err
			}
			return w.WritePNG(name, g, preview)
		})
		if err != nil {
			return out, err
		}
		s.previews[n.Name+"."+port] = filepath.ToSlash(name)
		if palErr != nil {
			return out, palErr
		}
	case pb.PortKind_PORT_KIND_TABLE:
		var recs []arrow.RecordBatch
		var schema *arrow.Schema
		table := func() error {
			if schema != nil {
				return nil
			}
			b, err := bytesOf()
			if err != nil {
				return err
			}
			r, err := ipc.NewMappedFileReader(b)
			if err != nil {
				return fmt.Errorf("reading the table: %w", err)
			}
			releases = append(releases, func() { r.Close() })
			for i := 0; i < r.NumRecords(); i++ {
				rec, err := r.RecordBatch(i)
				if err != nil {
					return fmt.Errorf("reading the table: %w", err)
				}
				recs = append(recs, rec)
			}
			schema = r.Schema()
			return nil
		}
		for _, f := range formats {
			var err error
			switch f {
			case "geoparquet":
				geo := s.georef(0)
				err = put(base+".parquet", f, geo, func() (dataset.Artifact, error) {
					if err := table(); err != nil {
						return dataset.Artifact{}, err
					}
					return w.WriteGeoParquet(base+".parquet", recs, dataset.GeoParquetOptions{Georef: geo})
				})
			case "arrow":
				err = put(base+".arrow", f, nil, func() (dataset.Artifact, error) {
					if err := table(); err != nil {
						return dataset.Artifact{}, err
					}
					return w.WriteArrowIPC(base+".arrow", schema, recs...)
				})
			default:
				err = fmt.Errorf("format %q cannot hold a table", f)
			}
			if err != nil {
				return out, err
			}
		}
	default:
		for _, f := range formats {
			if f != "raw" {
				return out, fmt.Errorf("format %q cannot hold a blob", f)
			}
			err := put(base+".bin", f, nil, func() (dataset.Artifact, error) {
				b, err := bytesOf()
				if err != nil {
					return dataset.Artifact{}, err
				}
				return w.WriteRaw(base+".bin", b)
			})
			if err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// handleKey is the part of an output's handle that shapes its datasets.
func handleKey(o *engine.Output) any {
	h := o.Handle
	return []any{h.GetKind(), h.GetDtype(), h.GetShape(), h.GetLevel(), h.GetOffset(), h.GetNbytes()}
}

// palette reads a colour table output: a stage that writes a grid port P and
// a table port P_colors with uint8 columns value, r, g and b gets a preview of
// P in those colours (categories such as biomes) instead of a ramp.
func (s *Session) palette(o *engine.Output) ([]dataset.PaletteEntry, error) {
	data, release, err := s.outputBytes(o)
	if err != nil {
		return nil, err
	}
	defer release()
	r, err := ipc.NewMappedFileReader(data)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var pal []dataset.PaletteEntry
	for i := 0; i < r.NumRecords(); i++ {
		rec, err := r.RecordBatch(i)
		if err != nil {
			return nil, err
		}
		var cols [4]*array.Uint8
		for k, name := range []string{"value", "r", "g", "b"} {
			idx := rec.Schema().FieldIndices(name)
			if len(idx) != 1 {
				return nil, fmt.Errorf("no column %q", name)
			}
			c, ok := rec.Column(idx[0]).(*array.Uint8)
			if !ok {
				return nil, fmt.Errorf("column %q is %s, want uint8", name, rec.Column(idx[0]).DataType())
			}
			cols[k] = c
		}
		for j := 0; j < int(rec.NumRows()); j++ {
			pal = append(pal, dataset.PaletteEntry{Value: float64(cols[0].Value(j)), R: cols[1].Value(j), G: cols[2].Value(j), B: cols[3].Value(j)})
		}
	}
	return pal, nil
}

// writeMetadata writes metadata.json: the resolved config, every stage's
// stats and every artifact's path, format, digest and size.
func (s *Session) writeMetadata(res *engine.Result, status string, artifacts []SavedArtifact) (string, error) {
	sort.Slice(artifacts, func(i, j int) bool { return artifacts[i].Path < artifacts[j].Path })
	levels := []map[string]uint32{}
	for _, l := range s.Plan.Levels {
		levels = append(levels, map[string]uint32{"level": l.GetLevel(), "width": l.GetWidth(), "height": l.GetHeight()})
	}
	doc := map[string]any{
		"pipehost_version": s.opts.Version,
		"run_id":           s.Config.RunID,
		"status":           status,
		"config": map[string]any{
			"file": s.Config.File, "seed": s.Config.Seed,
			"topology": map[string]any{"kind": s.Plan.Topology.GetKind(), "radius": s.Plan.Topology.GetRadius(),
				"minor_radius": s.Plan.Topology.GetMinorRadius(), "wrap_x": wrapName(s.Plan.Topology.GetWrapX()), "wrap_y": wrapName(s.Plan.Topology.GetWrapY())},
			"levels": levels,
		},
		"stages":    json.RawMessage(s.stagesMetadata(res)),
		"artifacts": artifacts,
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(s.OutDir(), "metadata.json")
	return path, atomicfile.Write(path, b)
}

// stagesMetadata encodes metadata.json's "stages": an object with a member
// per stage, in name order. It is encoded by hand, as encoding/json would
// write the same members (its reflection over a map per stage was most of
// the time spent at the end of a run of many small stages).
func (s *Session) stagesMetadata(res *engine.Result) []byte {
	nodes := slices.Clone(s.Plan.Nodes)
	slices.SortFunc(nodes, func(a, b *plan.Node) int { return strings.Compare(a.Name, b.Name) })
	o := runlog.Open(make([]byte, 0, 400*len(nodes)))
	for _, n := range nodes {
		m := o.Begin(n.Name)
		m.String("kind", n.Kind)
		m.String("version", n.Desc.GetVersion())
		if e, ok := s.Registry.Entry(n.Kind); ok && e.Plugin.Path != "" {
			m.String("plugin", e.Plugin.Path)
		}
		m.Uint("seed", n.Seed)
		params := m.Begin("params")
		for _, k := range slices.Sorted(maps.Keys(n.Params)) {
			switch x := n.Params[k].GetKind().(type) {
			case *pb.Value_BoolValue:
				params.Bool(k, x.BoolValue)
			case *pb.Value_IntValue:
				params.Int(k, x.IntValue)
			case *pb.Value_FloatValue:
				params.Float(k, x.FloatValue)
			case *pb.Value_StringValue:
				params.String(k, x.StringValue)
			default:
				params.Null(k)
			}
		}
		m.End(&params)
		if len(n.Inputs) > 0 {
			inputs := map[string]string{}
			for _, e := range n.Inputs {
				inputs[e.Input.GetName()] = e.From.Name + "." + e.Output.GetName()
			}
			in := m.Begin("inputs")
			for _, k := range slices.Sorted(maps.Keys(inputs)) {
				in.String(k, inputs[k])
			}
			m.End(&in)
		}
		r := res.Stages[n.Index]
		if r == nil {
			m.String("status", "")
			m.String("cache", "")
			m.Int("time_ns", 0)
			o.End(&m)
			continue
		}
		m.String("status", string(r.Status))
		m.String("cache", string(r.Cache))
		if r.MissReason != "" {
			m.String("miss_reason", r.MissReason)
		}
		var timeNs int64
		var peak, cpu uint64
		if r.Stats != nil {
			timeNs = r.Stats.GetEndNs() - r.Stats.GetStartNs()
			peak, cpu = r.Stats.GetPeakRssBytes(), r.Stats.GetCpuNs()
		}
		m.Int("time_ns", timeNs)
		if peak != 0 {
			m.Uint("peak_rss_bytes", peak)
		}
		if cpu != 0 {
			m.Uint("cpu_ns", cpu)
		}
		if len(r.Metrics) > 0 {
			m.Floats("metrics", r.Metrics)
		}
		if len(r.Outputs) > 0 {
			outs := m.Begin("outputs")
			for _, port := range slices.Sorted(maps.Keys(r.Outputs)) {
				d := r.Outputs[port].Digest
				out := outs.Begin(port)
				out.String("sha256", d.Hash)
				out.Int("size", d.Size)
				outs.End(&out)
			}
			m.End(&outs)
		}
		if r.Err != nil {
			m.String("error", r.Err.Error())
		}
		o.End(&m)
	}
	return o.Close()
}
