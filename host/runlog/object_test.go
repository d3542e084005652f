package runlog

import (
	"encoding/json"
	"math"
	"testing"
)

// Hand-encoded numbers and strings must read exactly as encoding/json
// writes them: metadata.json is checked against encoding/json byte for byte.
// (Only the escapes for HTML, of <, >, & and U+2028/9, differ: the run log
// does without them, and metadata.json gets them from encoding/json.)
func TestNumbersAndStringsAsEncodingJSONWrites(t *testing.T) {
	for _, f := range []float64{0, math.Copysign(0, -1), 1, -1, 0.1, 2.0, 0.02, 40000.0, 1e-6, 9.99e-7, 1e-7, 1.5e-300,
		123456789.125, 1e20, 1e21, 1.2e21, -3.4e38, math.MaxFloat64, math.SmallestNonzeroFloat64, 1.0 / 3} {
		want, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendFloat(nil, f); string(got) != string(want) {
			t.Errorf("%v: got %s, encoding/json writes %s", f, got, want)
		}
	}
	for _, s := range []string{"", "plain", "q\"b\\s", "nl\ncr\rtab\tbs\bff\f", "\x00\x1f\x7f", "é ☃ 𝄞"} {
		var enc []byte
		enc, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendString(nil, s); string(got) != string(enc) {
			t.Errorf("%q: got %s, encoding/json writes %s", s, got, enc)
		}
	}
}

func TestOpenBeginEndNest(t *testing.T) {
	o := Open([]byte("x"))
	o.String("a", "1")
	in := o.Begin("b")
	in.Int("c", -2)
	in.Null("d")
	o.End(&in)
	empty := o.Begin("e")
	o.End(&empty)
	o.Float("f", 0.5)
	if got, want := string(o.Close()), `x{"a":"1","b":{"c":-2,"d":null},"e":{},"f":0.5}`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
