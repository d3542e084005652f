package dataset
import ("testing";"bytes";szlib "compress/zlib";kzlib "github.com/klauspost/compress/zlib")
func BenchmarkZZTile(b *testing.B){
	g := makeGrid(Float32, 2048, 2048, terrain)
	raw := make([]byte, 512*512*4); tmp := make([]byte, 512*4)
	copyTile(raw, 512, 4, 2048, 2048, 512, 512, g.row)
	predictFloat(raw, tmp, 512, 4)
	for _, lvl := range []int{1,6} {
	b.Run("std", func(b *testing.B){ var buf bytes.Buffer; b.SetBytes(int64(len(raw))); for b.Loop(){ buf.Reset(); w,_ := szlib.NewWriterLevel(&buf, lvl); w.Write(raw); w.Close() }; b.ReportMetric(float64(buf.Len()),"bytes") })
	b.Run("kp", func(b *testing.B){ var buf bytes.Buffer; b.SetBytes(int64(len(raw))); for b.Loop(){ buf.Reset(); w,_ := kzlib.NewWriterLevel(&buf, lvl); w.Write(raw); w.Close() }; b.ReportMetric(float64(buf.Len()),"bytes") })
	}
}
