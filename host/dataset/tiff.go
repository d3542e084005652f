package dataset

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
)

// TIFF field types used here.
const (
	tASCII  = 2
	tShort  = 3
	tLong   = 4
	tDouble = 12
	tLong8  = 16
)

// TIFF and GeoTIFF tags used here.
const (
	tagNewSubfileType  = 254
	tagImageWidth      = 256
	tagImageLength     = 257
	tagBitsPerSample   = 258
	tagCompression     = 259
	tagPhotometric     = 262
	tagSamplesPerPixel = 277
	tagPlanarConfig    = 284
	tagPredictor       = 317
	tagTileWidth       = 322
	tagTileLength      = 323
	tagTileOffsets     = 324
	tagTileByteCounts  = 325
	tagSampleFormat    = 339
	tagModelPixelScale = 33550
	tagModelTiepoint   = 33922
	tagGeoKeyDirectory = 34735
	tagGeoDoubleParams = 34736
	tagGeoAsciiParams  = 34737
	tagGDALMetadata    = 42112
	tagGDALNoData      = 42113
)

// field is one IFD entry with its values already encoded little-endian.
type field struct {
	tag   uint16
	typ   uint16
	count uint64
	data  []byte
}

func shortField(tag uint16, v ...uint16) field {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return field{tag, tShort, uint64(len(v)), b}
}

// sizeField stores an image dimension as SHORT when it fits, as LONG otherwise.
func sizeField(tag uint16, v int) field {
	if v < 1<<16 {
		return shortField(tag, uint16(v))
	}
	b := binary.LittleEndian.AppendUint32(nil, uint32(v))
	return field{tag, tLong, 1, b}
}

func doubleField(tag uint16, v ...float64) field {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
	}
	return field{tag, tDouble, uint64(len(v)), b}
}

func asciiField(tag uint16, s string) field {
	b := append([]byte(s), 0)
	return field{tag, tASCII, uint64(len(b)), b}
}

// offsetsField stores tile offsets or byte counts as LONG (classic TIFF) or LONG8 (BigTIFF).
func offsetsField(tag uint16, big bool, v []uint64) field {
	if big {
		b := make([]byte, 8*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint64(b[8*i:], x)
		}
		return field{tag, tLong8, uint64(len(v)), b}
	}
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return field{tag, tLong, uint64(len(v)), b}
}

// tiffHeader returns the 8-byte (classic) or 16-byte (BigTIFF) little-endian header.
func tiffHeader(big bool, firstIFD uint64) []byte {
	if big {
		b := []byte{'I', 'I', 43, 0, 8, 0, 0, 0}
		return binary.LittleEndian.AppendUint64(b, firstIFD)
	}
	b := []byte{'I', 'I', 42, 0}
	return binary.LittleEndian.AppendUint32(b, uint32(firstIFD))
}

// ghostHeader is GDAL's structural metadata block that follows the TIFF header of a COG. It
// tells readers that IFDs precede the data, tiles are in row-major order, and each tile is
// framed by its size before and a copy of its last 4 bytes after. The first IFD must start
// right after it on an even offset, so it is padded with a space when needed.
func ghostHeader(big bool) []byte {
	body := "LAYOUT=IFDS_BEFORE_DATA\n" +
		"BLOCK_ORDER=ROW_MAJOR\n" +
		"BLOCK_LEADER=SIZE_AS_UINT4\n" +
		"BLOCK_TRAILER=LAST_4_BYTES_REPEATED\n" +
		"KNOWN_INCOMPATIBLE_EDITION=NO\n"
	head := len(tiffHeader(big, 0))
	first := fmt.Sprintf("GDAL_STRUCTURAL_METADATA_SIZE=%06d bytes\n", 0)
	if (head+len(first)+len(body))%2 == 1 {
		body += " "
	}
	return []byte(fmt.Sprintf("GDAL_STRUCTURAL_METADATA_SIZE=%06d bytes\n", len(body)) + body)
}

// encodeIFDs lays out a chain of IFDs starting at file offset start, each followed by the
// values that do not fit in its entries, and returns the bytes and the offset of each IFD.
// The layout depends only on the fields' sizes, so a call with placeholder values reserves
// exactly the space a later call with the real values fills.
func encodeIFDs(big bool, start uint64, ifds [][]field) ([]byte, []uint64) {
	entrySize, countSize, inline := uint64(12), uint64(2), uint64(4)
	if big {
		entrySize, countSize, inline = 20, 8, 8
	}
	var out []byte
	put := func(v uint64, n uint64) {
		switch n {
		case 2:
			out = binary.LittleEndian.AppendUint16(out, uint16(v))
		case 4:
			out = binary.LittleEndian.AppendUint32(out, uint32(v))
		case 8:
			out = binary.LittleEndian.AppendUint64(out, v)
		}
	}
	offsets := make([]uint64, len(ifds))
	pos := start
	for i, fields := range ifds {
		fields = append([]field(nil), fields...)
		sort.Slice(fields, func(a, b int) bool { return fields[a].tag < fields[b].tag })
		ifdLen := countSize + entrySize*uint64(len(fields)) + inline
		extra := uint64(0)
		for _, f := range fields {
			if n := uint64(len(f.data)); n > inline {
				extra += n + n%2
			}
		}
		offsets[i] = pos
		next := uint64(0)
		if i+1 < len(ifds) {
			next = pos + ifdLen + extra
		}
		put(uint64(len(fields)), countSize)
		valPos := pos + ifdLen
		var values []byte
		for _, f := range fields {
			put(uint64(f.tag), 2)
			put(uint64(f.typ), 2)
			put(f.count, inline)
			if n := uint64(len(f.data)); n > inline {
				put(valPos, inline)
				values = append(values, f.data...)
				if n%2 == 1 {
					values = append(values, 0)
				}
				valPos += n + n%2
			} else {
				out = append(out, f.data...)
				out = append(out, make([]byte, inline-n)...)
			}
		}
		put(next, inline)
		out = append(out, values...)
		pos += ifdLen + extra
	}
	return out, offsets
}
