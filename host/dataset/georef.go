package dataset

import (
	"encoding/xml"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Topology is the shape of the surface a grid covers.
type Topology uint8

// Topologies. The zero value means the grid carries no georeferencing.
const (
	NoTopology Topology = iota
	// Sphere grids are equirectangular: columns span longitude -180..180, rows span
	// latitude 90..-90, row 0 at the north.
	Sphere
	// Cylinder grids wrap in x only; they are placed in a local engineering CRS in metres.
	Cylinder
	// Torus grids wrap in x and y; they are placed in a local engineering CRS in metres.
	Torus
	// Plane grids do not wrap; they are placed in a local engineering CRS in metres.
	Plane
)

func (t Topology) String() string {
	switch t {
	case NoTopology:
		return "none"
	case Sphere:
		return "sphere"
	case Cylinder:
		return "cylinder"
	case Torus:
		return "torus"
	case Plane:
		return "plane"
	}
	return fmt.Sprintf("Topology(%d)", uint8(t))
}

// Wrap policies recorded per axis. Readers of the files see them as metadata only.
const (
	WrapRepeat  = "repeat"  // the axis is periodic
	WrapClamp   = "clamp"   // the axis ends at the grid's edge
	WrapReflect = "reflect" // the axis mirrors at the grid's edge
	WrapPole    = "pole"    // the axis ends at a pole and continues on the opposite meridian
)

// Georef places a grid on its surface.
type Georef struct {
	Topology Topology
	// Radius of the sphere in metres (Sphere only; required unless WGS84 is set).
	Radius float64
	// WGS84 declares the sphere grid to be on the WGS 84 ellipsoid instead of a sphere of
	// Radius (EPSG:4326).
	WGS84 bool
	// PixelSize is the size of one cell in metres along x and y (Cylinder, Torus, Plane).
	PixelSize [2]float64
	// Origin is the engineering coordinate of the grid's upper-left corner (Cylinder,
	// Torus, Plane). Nil places the grid at x 0..W·px, y 0..H·py with row 0 at the top.
	Origin *[2]float64
	// WrapX and WrapY override the topology's wrap policy for each axis.
	WrapX, WrapY string
	// Name names the CRS; empty gives "pipehost sphere R=<radius>" or "pipehost <topology>"
	// ("pipehost cylinder", "pipehost torus", "pipehost plane").
	Name string
}

func (g Georef) wraps() (x, y string) {
	switch g.Topology {
	case Sphere:
		x, y = WrapRepeat, WrapPole
	case Cylinder:
		x, y = WrapRepeat, WrapClamp
	case Torus:
		x, y = WrapRepeat, WrapRepeat
	case Plane:
		x, y = WrapClamp, WrapClamp
	}
	if g.WrapX != "" {
		x = g.WrapX
	}
	if g.WrapY != "" {
		y = g.WrapY
	}
	return x, y
}

func (g Georef) check() error {
	switch g.Topology {
	case NoTopology:
		return nil
	case Sphere:
		if !g.WGS84 && !(g.Radius > 0 && !math.IsInf(g.Radius, 0)) {
			return fmt.Errorf("sphere georeferencing needs a positive radius, got %v", g.Radius)
		}
	case Cylinder, Torus, Plane:
		for _, p := range g.PixelSize {
			if !(p > 0 && !math.IsInf(p, 0)) {
				return fmt.Errorf("%s georeferencing needs a positive pixel size in metres, got %v", g.Topology, g.PixelSize)
			}
		}
		if g.Origin != nil && (isBad(g.Origin[0]) || isBad(g.Origin[1])) {
			return fmt.Errorf("%s georeferencing: origin %v is not finite", g.Topology, *g.Origin)
		}
	default:
		return fmt.Errorf("unknown topology %d", g.Topology)
	}
	return nil
}

func isBad(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }

func (g Georef) crsName() string {
	if g.Name != "" {
		return g.Name
	}
	if g.Topology == Sphere {
		return "pipehost sphere R=" + strconv.FormatFloat(g.Radius, 'f', -1, 64)
	}
	return "pipehost " + g.Topology.String()
}

// asciiName makes a CRS name safe for GeoAsciiParams, where '|' separates strings and the
// whole block is ASCII.
func asciiName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '|' || c < 0x20 || c > 0x7e {
			b[i] = '_'
		}
	}
	return string(b)
}

// transform returns the upper-left corner and the cell size of a width×height grid.
func (g Georef) transform(width, height int) (x0, y0, dx, dy float64) {
	switch g.Topology {
	case Sphere:
		return -180, 90, 360 / float64(width), 180 / float64(height)
	case Cylinder, Torus, Plane:
		dx, dy = g.PixelSize[0], g.PixelSize[1]
		if g.Origin != nil {
			return g.Origin[0], g.Origin[1], dx, dy
		}
		return 0, float64(height) * dy, dx, dy
	}
	return 0, 0, 1, 1
}

// GeoKey IDs and codes from the GeoTIFF specification.
const (
	keyGTModelType        = 1024
	keyGTRasterType       = 1025
	keyGTCitation         = 1026
	keyGeographicType     = 2048
	keyGeogCitation       = 2049
	keyGeogGeodeticDatum  = 2050
	keyGeogPrimeMeridian  = 2051
	keyGeogAngularUnits   = 2054
	keyGeogEllipsoid      = 2056
	keyGeogSemiMajorAxis  = 2057
	keyGeogSemiMinorAxis  = 2058
	keyProjLinearUnits    = 3076
	modelTypeGeographic   = 2
	rasterPixelIsArea     = 1
	userDefined           = 32767
	gcsWGS84              = 4326
	pmGreenwich           = 8901
	angularDegree         = 9102
	linearMetre           = 9001
	geoKeyDirectoryVerRev = 1
)

// geoFields returns the GeoTIFF tags of the main image: pixel scale, tie point and keys.
func (g Georef) geoFields(width, height int) []field {
	if g.Topology == NoTopology {
		return nil
	}
	x0, y0, dx, dy := g.transform(width, height)
	fields := []field{
		doubleField(tagModelPixelScale, dx, dy, 0),
		doubleField(tagModelTiepoint, 0, 0, 0, x0, y0, 0),
	}
	type key struct {
		id, loc, count, value uint16
	}
	var keys []key
	var doubles []float64
	var ascii strings.Builder
	short := func(id, v uint16) { keys = append(keys, key{id, 0, 1, v}) }
	dbl := func(id uint16, v float64) {
		keys = append(keys, key{id, tagGeoDoubleParams, 1, uint16(len(doubles))})
		doubles = append(doubles, v)
	}
	str := func(id uint16, s string) {
		s += "|" // '|' ends each string in GeoAsciiParams
		keys = append(keys, key{id, tagGeoAsciiParams, uint16(len(s)), uint16(ascii.Len())})
		ascii.WriteString(s)
	}
	short(keyGTRasterType, rasterPixelIsArea)
	switch {
	case g.Topology == Sphere && g.WGS84:
		short(keyGTModelType, modelTypeGeographic)
		short(keyGeographicType, gcsWGS84)
		str(keyGeogCitation, "WGS 84")
		short(keyGeogAngularUnits, angularDegree)
	case g.Topology == Sphere:
		name := asciiName(g.crsName())
		short(keyGTModelType, modelTypeGeographic)
		short(keyGeographicType, userDefined)
		// GDAL reads the datum and ellipsoid names from this citation layout.
		str(keyGeogCitation, "GCS Name = "+name+"|Datum = "+name+" datum|Ellipsoid = "+name+"|Primem = Greenwich|")
		short(keyGeogGeodeticDatum, userDefined)
		short(keyGeogPrimeMeridian, pmGreenwich)
		short(keyGeogAngularUnits, angularDegree)
		short(keyGeogEllipsoid, userDefined)
		dbl(keyGeogSemiMajorAxis, g.Radius)
		dbl(keyGeogSemiMinorAxis, g.Radius)
	default:
		// A local engineering CRS: no model type, only a citation and linear units. GDAL reads
		// this back as LOCAL_CS["<citation>", UNIT["metre", 1]].
		str(keyGTCitation, asciiName(g.crsName()))
		short(keyProjLinearUnits, linearMetre)
	}
	sort.Slice(keys, func(a, b int) bool { return keys[a].id < keys[b].id })
	dir := []uint16{geoKeyDirectoryVerRev, 1, 0, uint16(len(keys))}
	for _, k := range keys {
		dir = append(dir, k.id, k.loc, k.count, k.value)
	}
	fields = append(fields, shortField(tagGeoKeyDirectory, dir...))
	if len(doubles) > 0 {
		fields = append(fields, doubleField(tagGeoDoubleParams, doubles...))
	}
	if ascii.Len() > 0 {
		fields = append(fields, asciiField(tagGeoAsciiParams, ascii.String()))
	}
	return fields
}

// checkMetadata rejects item names GDAL's metadata XML cannot carry unchanged and names that
// the georeferencing sets itself.
func checkMetadata(g Georef, extra map[string]string) error {
	for k := range extra {
		ok := k != ""
		for i, r := range k {
			switch {
			case r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z':
			case i > 0 && (r >= '0' && r <= '9' || r == '.' || r == '-' || r == ':'):
			default:
				ok = false
			}
		}
		if !ok {
			return fmt.Errorf("metadata item name %q: use letters, digits, '_', '.', '-', ':' and start with a letter or '_'", k)
		}
		if g.Topology != NoTopology && (k == "PIPEHOST_TOPOLOGY" || k == "PIPEHOST_WRAP_X" || k == "PIPEHOST_WRAP_Y") {
			return fmt.Errorf("metadata item %s is set from the georeferencing; set Georef.WrapX/WrapY instead", k)
		}
	}
	return nil
}

// gdalMetadata renders GDAL's metadata XML: the topology, the wrap policy per axis and the
// caller's items, sorted by name. GDAL escapes item values twice, once as a string and once
// as XML text, and unescapes twice when reading; values are written the same way so that
// '<', '&' and '>' read back unchanged.
func gdalMetadata(g Georef, extra map[string]string) string {
	items := map[string]string{}
	for k, v := range extra {
		items[k] = v
	}
	if g.Topology != NoTopology {
		x, y := g.wraps()
		items["PIPEHOST_TOPOLOGY"] = g.Topology.String()
		items["PIPEHOST_WRAP_X"] = x
		items["PIPEHOST_WRAP_Y"] = y
	}
	if len(items) == 0 {
		return ""
	}
	names := make([]string, 0, len(items))
	for k := range items {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("<GDALMetadata>\n")
	for _, k := range names {
		b.WriteString(`  <Item name="`)
		xml.EscapeText(&b, []byte(k))
		b.WriteString(`">`)
		var once strings.Builder
		xml.EscapeText(&once, []byte(items[k]))
		xml.EscapeText(&b, []byte(once.String()))
		b.WriteString("</Item>\n")
	}
	b.WriteString("</GDALMetadata>\n")
	return b.String()
}

// noDataString formats a nodata value the way GDAL parses it back to the same value of the
// band's type.
func noDataString(dt DType, v float64) string {
	switch {
	case math.IsNaN(v):
		return "nan"
	case math.IsInf(v, 1):
		return "inf"
	case math.IsInf(v, -1):
		return "-inf"
	case dt == Float32:
		return strconv.FormatFloat(v, 'g', -1, 32)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
