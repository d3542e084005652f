package dataset

import "encoding/binary"

// TIFF predictor codes.
const (
	predictorNone       = 1
	predictorHorizontal = 2 // integers: each sample minus its left neighbour
	predictorFloat      = 3 // floats: byte planes, most significant first, then byte differences
)

func predictorFor(dt DType) uint16 {
	if dt.IsFloat() {
		return predictorFloat
	}
	return predictorHorizontal
}

// predictFloat applies TIFF predictor 3 to each of the rows of tile in place. Each row of w
// samples of size bytes is split into size byte planes, the most significant first, and then
// every byte is replaced by its difference to the byte before it. tmp must hold one row.
func predictFloat(tile, tmp []byte, w, size int) {
	rowLen := w * size
	for off := 0; off+rowLen <= len(tile); off += rowLen {
		row := tile[off : off+rowLen]
		copy(tmp, row)
		switch size {
		case 4:
			p0, p1, p2, p3 := row[0:w], row[w:2*w], row[2*w:3*w], row[3*w:4*w]
			for i := 0; i < w; i++ {
				s := tmp[4*i : 4*i+4]
				p0[i], p1[i], p2[i], p3[i] = s[3], s[2], s[1], s[0]
			}
		default:
			for i := 0; i < w; i++ {
				for b := 0; b < size; b++ {
					row[(size-1-b)*w+i] = tmp[i*size+b]
				}
			}
		}
		for j := rowLen - 1; j > 0; j-- {
			row[j] -= row[j-1]
		}
	}
}

// predictHorizontal applies TIFF predictor 2 to each row of a tile of little-endian integers
// in place: every sample becomes its difference (modulo 2^bits) to its left neighbour.
func predictHorizontal(tile []byte, w, size int) {
	rowLen := w * size
	le := binary.LittleEndian
	for off := 0; off+rowLen <= len(tile); off += rowLen {
		row := tile[off : off+rowLen]
		switch size {
		case 1:
			for j := w - 1; j > 0; j-- {
				row[j] -= row[j-1]
			}
		case 2:
			for j := w - 1; j > 0; j-- {
				le.PutUint16(row[2*j:], le.Uint16(row[2*j:])-le.Uint16(row[2*j-2:]))
			}
		case 4:
			for j := w - 1; j > 0; j-- {
				le.PutUint32(row[4*j:], le.Uint32(row[4*j:])-le.Uint32(row[4*j-4:]))
			}
		case 8:
			for j := w - 1; j > 0; j-- {
				le.PutUint64(row[8*j:], le.Uint64(row[8*j:])-le.Uint64(row[8*j-8:]))
			}
		}
	}
}
