package dataset

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// Column is a named Arrow array to put beside the geometry in GeometryRecord.
type Column struct {
	Name   string
	Values arrow.Array
}

// GeometryRecord builds a record batch with a "geometry" column of WKB (a nil Geometry is a
// null) followed by cols, each as long as geoms. The caller releases the record.
func GeometryRecord(mem memory.Allocator, geoms []Geometry, cols ...Column) (arrow.RecordBatch, error) {
	if mem == nil {
		mem = memory.DefaultAllocator
	}
	b := array.NewBinaryBuilder(mem, arrow.BinaryTypes.Binary)
	defer b.Release()
	var buf []byte
	for _, g := range geoms {
		if g == nil {
			b.AppendNull()
			continue
		}
		buf = g.AppendWKB(buf[:0])
		b.Append(buf)
	}
	geom := b.NewArray()
	defer geom.Release()
	fields := []arrow.Field{{Name: "geometry", Type: arrow.BinaryTypes.Binary, Nullable: true}}
	arrays := []arrow.Array{geom}
	for _, c := range cols {
		if c.Values.Len() != len(geoms) {
			return nil, fmt.Errorf("column %s has %d rows, the geometries %d", c.Name, c.Values.Len(), len(geoms))
		}
		if c.Name == "geometry" {
			return nil, errors.New("column name geometry is taken by the geometries")
		}
		fields = append(fields, arrow.Field{Name: c.Name, Type: c.Values.DataType(), Nullable: true})
		arrays = append(arrays, c.Values)
	}
	return array.NewRecordBatch(arrow.NewSchema(fields, nil), arrays, int64(len(geoms))), nil
}

// GeoParquetOptions controls WriteGeoParquet.
type GeoParquetOptions struct {
	// GeometryColumn names the WKB column (binary or large binary); empty means "geometry".
	GeometryColumn string
	// Georef gives the CRS of the coordinates: none or a WGS 84 sphere leave the GeoParquet
	// default (OGC:CRS84, longitude/latitude); a sphere of a radius is written as a
	// geographic CRS on that sphere; a cylinder or torus as an engineering CRS in metres.
	Georef Georef
	// RowGroupRows caps the rows per row group; 0 means one row group per record batch.
	RowGroupRows int64
}

// bboxColumn names the covering column WriteGeoParquet adds.
const bboxColumn = "bbox"

var bboxType = arrow.StructOf(
	arrow.Field{Name: "xmin", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	arrow.Field{Name: "ymin", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	arrow.Field{Name: "xmax", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	arrow.Field{Name: "ymax", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
)

// WriteGeoParquet writes record batches (all of one schema) as GeoParquet 1.1: the WKB
// geometry column, the other columns, and an added "bbox" struct column (xmin, ymin, xmax,
// ymax as float64) declared as the geometry's bbox covering, so readers can skip row groups
// by extent. The "geo" key (in the Parquet footer and in the stored Arrow schema) carries version 1.1.0, the primary column,
// its encoding, geometry types, overall bbox and CRS. Columns are zstd-compressed.
func (w *Writer) WriteGeoParquet(name string, recs []arrow.RecordBatch, opt GeoParquetOptions) (Artifact, error) {
	if err := w.checkName(name); err != nil {
		return Artifact{}, err
	}
	fail := func(err error) (Artifact, error) {
		return Artifact{}, fmt.Errorf("dataset: %s: %w", w.display(name), err)
	}
	geoCol := opt.GeometryColumn
	if geoCol == "" {
		geoCol = "geometry"
	}
	if len(recs) == 0 {
		return fail(errors.New("GeoParquet needs at least one record batch (for its schema)"))
	}
	if err := opt.Georef.check(); err != nil {
		return fail(err)
	}
	schema := recs[0].Schema()
	idx := schema.FieldIndices(geoCol)
	if len(idx) != 1 {
		return fail(fmt.Errorf("no single geometry column %q in schema %s", geoCol, schema))
	}
	gi := idx[0]
	switch schema.Field(gi).Type.ID() {
	case arrow.BINARY, arrow.LARGE_BINARY:
	default:
		return fail(fmt.Errorf("geometry column %s is %s, want binary WKB", geoCol, schema.Field(gi).Type))
	}
	if schema.HasField(bboxColumn) {
		return fail(fmt.Errorf("column name %s is reserved for the bbox covering", bboxColumn))
	}
	for i, r := range recs {
		if !r.Schema().Equal(schema) {
			return fail(fmt.Errorf("record batch %d has schema %s, the first has %s", i, r.Schema(), schema))
		}
	}

	// Summaries first: a bad geometry is reported before any file exists.
	types := map[string]bool{}
	total := [4]float64{math.Inf(1), math.Inf(1), math.Inf(-1), math.Inf(-1)}
	bboxes := make([]arrow.Array, len(recs))
	defer func() {
		for _, b := range bboxes {
			if b != nil {
				b.Release()
			}
		}
	}()
	for ri, r := range recs {
		col := r.Column(gi).(interface {
			arrow.Array
			Value(int) []byte
		})
		sb := array.NewStructBuilder(memory.DefaultAllocator, bboxType)
		for i := 0; i < col.Len(); i++ {
			if col.IsNull(i) {
				sb.AppendNull()
				continue
			}
			s, err := summarizeWKB(col.Value(i))
			if err != nil {
				sb.Release()
				return fail(fmt.Errorf("record batch %d row %d: %w", ri, i, err))
			}
			types[s.typeName] = true
			if s.empty {
				sb.AppendNull()
				continue
			}
			sb.Append(true)
			for k := 0; k < 4; k++ {
				sb.FieldBuilder(k).(*array.Float64Builder).Append(s.bbox[k])
			}
			total[0], total[1] = math.Min(total[0], s.bbox[0]), math.Min(total[1], s.bbox[1])
			total[2], total[3] = math.Max(total[2], s.bbox[2]), math.Max(total[3], s.bbox[3])
		}
		bboxes[ri] = sb.NewArray()
		sb.Release()
	}

	colMeta := map[string]any{
		"encoding":       "WKB",
		"geometry_types": sortedKeys(types),
		"covering": map[string]any{"bbox": map[string][]string{
			"xmin": {bboxColumn, "xmin"}, "ymin": {bboxColumn, "ymin"},
			"xmax": {bboxColumn, "xmax"}, "ymax": {bboxColumn, "ymax"},
		}},
	}
	if total[0] <= total[2] {
		colMeta["bbox"] = total[:]
	}
	if crs := projJSON(opt.Georef); crs != nil {
		colMeta["crs"] = crs
	}
	geo, err := json.Marshal(map[string]any{
		"version":        "1.1.0",
		"primary_column": geoCol,
		"columns":        map[string]any{geoCol: colMeta},
	})
	if err != nil {
		return fail(err)
	}

	fields := append(append([]arrow.Field(nil), schema.Fields()...), arrow.Field{Name: bboxColumn, Type: bboxType, Nullable: true})
	// GeoPandas' from_arrow finds geometry by GeoArrow field metadata, not by the "geo"
	// key, so the stored Arrow schema also tags the column as geoarrow.wkb with its CRS.
	// The Parquet column itself stays plain binary WKB, as GeoParquet requires.
	ext, err := geoArrowMetadata(opt.Georef)
	if err != nil {
		return fail(err)
	}
	fields[gi].Metadata = withMetadata(fields[gi].Metadata, ext)
	// "geo" goes into the Arrow schema's metadata: pqarrow copies that into the Parquet
	// footer and into the stored ARROW:schema, so Arrow readers (pyarrow's read_table,
	// GeoDataFrame.from_arrow) see it as well as Parquet ones. A "geo" the caller's schema
	// already carried is replaced, so the file holds exactly one.
	md := withMetadata(schema.Metadata(), map[string]string{"geo": string(geo)})
	outSchema := arrow.NewSchema(fields, &md)

	p, err := w.create(name)
	if err != nil {
		return Artifact{}, err
	}
	err = func() error {
		props := parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Zstd), parquet.WithStats(true))
		fw, err := pqarrow.NewFileWriter(outSchema, noClose{p.f}, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
		if err != nil {
			return err
		}
		for ri, r := range recs {
			cols := append(append([]arrow.Array(nil), r.Columns()...), bboxes[ri])
			out := array.NewRecordBatch(outSchema, cols, r.NumRows())
			err := writeRowGroups(fw, out, opt.RowGroupRows)
			out.Release()
			if err != nil {
				fw.Close()
				return fmt.Errorf("record batch %d: %w", ri, err)
			}
		}
		return fw.Close()
	}()
	if err != nil {
		p.abort()
		return fail(err)
	}
	return p.commit("geoparquet")
}

func writeRowGroups(fw *pqarrow.FileWriter, rec arrow.RecordBatch, rows int64) error {
	if rows <= 0 || rec.NumRows() <= rows {
		return fw.Write(rec)
	}
	for off := int64(0); off < rec.NumRows(); off += rows {
		part := rec.NewSlice(off, min(off+rows, rec.NumRows()))
		err := fw.Write(part)
		part.Release()
		if err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// withMetadata returns md with the keys of set replaced or added (sorted, so files are
// byte-for-byte reproducible).
func withMetadata(md arrow.Metadata, set map[string]string) arrow.Metadata {
	var keys, vals []string
	for i, k := range md.Keys() {
		if _, replaced := set[k]; !replaced {
			keys, vals = append(keys, k), append(vals, md.Values()[i])
		}
	}
	for _, k := range sortedKeys(boolSet(set)) {
		keys, vals = append(keys, k), append(vals, set[k])
	}
	return arrow.NewMetadata(keys, vals)
}

func boolSet(m map[string]string) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

// geoArrowMetadata is the GeoArrow extension metadata of a WKB column in g's CRS; no CRS
// means GeoParquet's default, written out as OGC:CRS84 because GeoArrow has no default.
func geoArrowMetadata(g Georef) (map[string]string, error) {
	meta := map[string]any{"crs": "OGC:CRS84", "crs_type": "authority_code"}
	if crs := projJSON(g); crs != nil {
		meta = map[string]any{"crs": crs, "crs_type": "projjson"}
	}
	b, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	return map[string]string{"ARROW:extension:name": "geoarrow.wkb", "ARROW:extension:metadata": string(b)}, nil
}

// noClose keeps the Parquet writer from closing the file, which is renamed into place later.
type noClose struct{ io.Writer }

// projJSON describes the CRS of g in PROJJSON, or returns nil for GeoParquet's default
// (OGC:CRS84).
func projJSON(g Georef) map[string]any {
	switch {
	case g.Topology == NoTopology || g.Topology == Sphere && g.WGS84:
		return nil
	case g.Topology == Sphere:
		name := g.crsName()
		return map[string]any{
			"type": "GeographicCRS",
			"name": name,
			"datum": map[string]any{
				"type":      "GeodeticReferenceFrame",
				"name":      name + " datum",
				"ellipsoid": map[string]any{"name": name, "radius": g.Radius},
			},
			"coordinate_system": map[string]any{
				"subtype": "ellipsoidal",
				"axis": []map[string]any{
					{"name": "Longitude", "abbreviation": "lon", "direction": "east", "unit": "degree"},
					{"name": "Latitude", "abbreviation": "lat", "direction": "north", "unit": "degree"},
				},
			},
		}
	}
	name := g.crsName()
	return map[string]any{
		"type":  "EngineeringCRS",
		"name":  name,
		"datum": map[string]any{"type": "EngineeringDatum", "name": name},
		"coordinate_system": map[string]any{
			"subtype": "Cartesian",
			"axis": []map[string]any{
				{"name": "Easting", "abbreviation": "x", "direction": "east", "unit": "metre"},
				{"name": "Northing", "abbreviation": "y", "direction": "north", "unit": "metre"},
			},
		},
	}
}

// WriteArrowIPC writes record batches of schema as an Arrow IPC file (the random-access
// "Feather v2" format). Columns are stored uncompressed, so readers can map them.
func (w *Writer) WriteArrowIPC(name string, schema *arrow.Schema, recs ...arrow.RecordBatch) (Artifact, error) {
	if err := w.checkName(name); err != nil {
		return Artifact{}, err
	}
	for i, r := range recs {
		if !r.Schema().Equal(schema) {
			return Artifact{}, fmt.Errorf("dataset: %s: record batch %d has schema %s, want %s", w.display(name), i, r.Schema(), schema)
		}
	}
	p, err := w.create(name)
	if err != nil {
		return Artifact{}, err
	}
	err = func() error {
		iw, err := ipc.NewFileWriter(p.f, ipc.WithSchema(schema))
		if err != nil {
			return err
		}
		for i, r := range recs {
			if err := iw.Write(r); err != nil {
				iw.Close()
				return fmt.Errorf("record batch %d: %w", i, err)
			}
		}
		return iw.Close()
	}()
	if err != nil {
		p.abort()
		return Artifact{}, fmt.Errorf("dataset: %s: %w", w.display(name), err)
	}
	return p.commit("arrow-ipc")
}
