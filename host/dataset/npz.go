package dataset

import (
	"archive/zip"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strings"

	kflate "github.com/klauspost/compress/flate"
)

// NPZMember is one array of an NPZ file. numpy.load(path)[Name] returns it with shape
// (Height, Width).
type NPZMember struct {
	Name string
	Grid Grid
}

// NPZOptions controls WriteNPZ.
type NPZOptions struct {
	// Compress deflates the members, as numpy.savez_compressed does. Stored members (the
	// default) keep every array's data 64-byte aligned within the file, so they can be
	// memory-mapped.
	Compress bool
}

// NPZDTypes lists the dtypes WriteNPZ accepts.
var NPZDTypes = []DType{Float32, Float64, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64}

var npyDescr = map[DType]string{
	Float32: "<f4", Float64: "<f8",
	Int8: "|i1", Int16: "<i2", Int32: "<i4", Int64: "<i8",
	Uint8: "|u1", Uint16: "<u2", Uint32: "<u4", Uint64: "<u8",
}

// npyHeader returns an NPY format 1.0 header for g: magic, version, header length, the
// header dict, padded with spaces and ended by '\n' so that the array data that follows starts
// at a multiple of 64 bytes.
func npyHeader(g Grid) []byte {
	dict := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }", npyDescr[g.DType], g.Height, g.Width)
	const pre = 10 // magic (6) + version (2) + header length (2)
	total := pre + len(dict) + 1
	total += (64 - total%64) % 64
	h := make([]byte, 0, total)
	h = append(h, "\x93NUMPY\x01\x00"...)
	h = binary.LittleEndian.AppendUint16(h, uint16(total-pre))
	h = append(h, dict...)
	h = append(h, strings.Repeat(" ", total-len(h)-1)...)
	return append(h, '\n')
}

// alignExtraID tags the local-header extra field that pads member data to 64 bytes.
// Readers skip extra fields they do not know.
const alignExtraID = 0x6870

// msdosDate1980 is 1980-01-01, the earliest zip date; fixed so that equal inputs give equal
// files (and equal digests).
const msdosDate1980 = 1<<5 | 1

// WriteNPZ writes members as an NPZ archive (a zip of .npy files). Stored members are laid out
// so that each array's data starts at a multiple of 64 bytes in the file: the NPY header is
// padded to 64 bytes and the zip local header is padded with an extra field. Data is streamed
// from each grid; nothing is copied whole. Accepted dtypes are listed in NPZDTypes.
func (w *Writer) WriteNPZ(name string, members []NPZMember, opt NPZOptions) (Artifact, error) {
	if err := w.checkName(name); err != nil {
		return Artifact{}, err
	}
	if err := checkNPZ(members); err != nil {
		return Artifact{}, fmt.Errorf("dataset: %s: %w", w.display(name), err)
	}
	p, err := w.create(name)
	if err != nil {
		return Artifact{}, err
	}
	if err := writeNPZ(p.f, members, opt); err != nil {
		p.abort()
		return Artifact{}, fmt.Errorf("dataset: %s: %w", w.display(name), err)
	}
	return p.commit("npz")
}

func checkNPZ(members []NPZMember) error {
	if len(members) == 0 {
		return fmt.Errorf("NPZ needs at least one member")
	}
	seen := map[string]bool{}
	for _, m := range members {
		if m.Name == "" || strings.ContainsAny(m.Name, "/\\\x00") || strings.HasPrefix(m.Name, ".") {
			return fmt.Errorf("NPZ member name %q: must be non-empty, without slashes, not starting with '.'", m.Name)
		}
		if seen[m.Name] {
			return fmt.Errorf("NPZ member %q appears twice", m.Name)
		}
		seen[m.Name] = true
		if err := m.Grid.check("NPZ member " + m.Name); err != nil {
			return err
		}
		if !supported(m.Grid.DType, NPZDTypes) {
			return fmt.Errorf("NPZ member %s: dtype %s not supported (supported: %s)", m.Name, m.Grid.DType, dtypeNames(NPZDTypes))
		}
	}
	return nil
}

// countingWriter tracks the offset in the file under the zip writer's buffer.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

const npzChunk = 4 << 20

func writeNPZ(f io.Writer, members []NPZMember, opt NPZOptions) error {
	cw := &countingWriter{w: f}
	zw := zip.NewWriter(cw)
	// The same deflate implementation as the COG tiles: several times faster than the
	// standard library's at the same level.
	zw.RegisterCompressor(zip.Deflate, func(out io.Writer) (io.WriteCloser, error) {
		return kflate.NewWriter(out, 6)
	})
	for _, m := range members {
		head := npyHeader(m.Grid)
		fh := &zip.FileHeader{Name: m.Name + ".npy", ModifiedDate: msdosDate1980}
		var dst io.Writer
		var err error
		if opt.Compress {
			fh.Method = zip.Deflate
			dst, err = zw.CreateHeader(fh)
		} else {
			// The local header goes right at the current offset once the buffer is flushed.
			if err := zw.Flush(); err != nil {
				return err
			}
			size := uint64(len(head)) + uint64(len(m.Grid.Data))
			fh.Method = zip.Store
			fh.CRC32 = crc32.Update(crc32.ChecksumIEEE(head), crc32.IEEETable, m.Grid.Data)
			fh.CompressedSize64, fh.UncompressedSize64 = size, size
			if size >= math.MaxUint32 {
				// Sizes that need zip64 go in a data descriptor, as for streamed members.
				fh.Flags |= 0x8
			}
			fh.Extra = alignPadding(cw.n + 30 + int64(len(fh.Name)))
			dst, err = zw.CreateRaw(fh)
		}
		if err != nil {
			return fmt.Errorf("NPZ member %s: %w", m.Name, err)
		}
		if _, err := dst.Write(head); err != nil {
			return fmt.Errorf("NPZ member %s: %w", m.Name, err)
		}
		for off := 0; off < len(m.Grid.Data); off += npzChunk {
			if _, err := dst.Write(m.Grid.Data[off:min(off+npzChunk, len(m.Grid.Data))]); err != nil {
				return fmt.Errorf("NPZ member %s: %w", m.Name, err)
			}
		}
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("closing the zip: %w", err)
	}
	return nil
}

// alignPadding returns an extra field that moves data starting at offset start (just past
// the name) to a multiple of 64. An extra field is at least 4 bytes, so a gap of 1..3 grows
// by 64.
func alignPadding(start int64) []byte {
	pad := int((64 - start%64) % 64)
	if pad == 0 {
		return nil
	}
	if pad < 4 {
		pad += 64
	}
	b := make([]byte, pad)
	binary.LittleEndian.PutUint16(b, alignExtraID)
	binary.LittleEndian.PutUint16(b[2:], uint16(pad-4))
	return b
}
