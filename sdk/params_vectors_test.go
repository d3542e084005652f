package sdk

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// vecParams is a stage's params struct with one param "v" of type T.
type vecParams[T any] struct {
	V T `param:"v"`
}

// readAs decodes v as a Run does: through Define's decoder for a struct
// with one required param of type T.
func readAs[T any](v *pb.Value) (any, error) {
	st := Define(Spec{Kind: "vectors.params", Version: "1.0.0"}, func(*Context, vecParams[T]) error { return nil })
	rv, err := st.decode(map[string]*pb.Value{"v": v})
	if err != nil {
		return nil, err
	}
	return rv.Interface().(vecParams[T]).V, nil
}

var vecReaders = map[string]func(*pb.Value) (any, error){
	"bool": readAs[bool], "i8": readAs[int8], "i16": readAs[int16], "i32": readAs[int32], "i64": readAs[int64],
	"u8": readAs[uint8], "u16": readAs[uint16], "u32": readAs[uint32], "u64": readAs[uint64],
	"f32": readAs[float32], "f64": readAs[float64], "string": readAs[string],
}

func vecEncode(x any) map[string]any {
	switch x := x.(type) {
	case bool:
		return map[string]any{"bool": x}
	case string:
		return map[string]any{"string": x}
	case float32:
		return map[string]any{"f32_bits": fmt.Sprintf("0x%08x", math.Float32bits(x))}
	case float64:
		return map[string]any{"f64_bits": fmt.Sprintf("0x%016x", math.Float64bits(x))}
	}
	rv := reflect.ValueOf(x)
	if rv.CanInt() {
		return map[string]any{"int": strconv.FormatInt(rv.Int(), 10)}
	}
	return map[string]any{"int": strconv.FormatUint(rv.Uint(), 10)}
}

func vecValue(t *testing.T, j map[string]any) *pb.Value {
	switch {
	case j["bool"] != nil:
		return &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: j["bool"].(bool)}}
	case j["int"] != nil:
		i, err := strconv.ParseInt(j["int"].(string), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return &pb.Value{Kind: &pb.Value_IntValue{IntValue: i}}
	case j["float_bits"] != nil:
		b, err := strconv.ParseUint(strings.TrimPrefix(j["float_bits"].(string), "0x"), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: math.Float64frombits(b)}}
	case j["string"] != nil:
		return &pb.Value{Kind: &pb.Value_StringValue{StringValue: j["string"].(string)}}
	}
	return &pb.Value{}
}

func vecIsNaN(r map[string]any) bool {
	if s, ok := r["f32_bits"].(string); ok {
		b, _ := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 32)
		return math.IsNaN(float64(math.Float32frombits(uint32(b))))
	}
	if s, ok := r["f64_bits"].(string); ok {
		b, _ := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
		return math.IsNaN(math.Float64frombits(b))
	}
	return false
}

// testdata/params.json (go run ./sdk/internal/genvectors) through the
// SDK's own decoder: what the generator recorded from the conversion rules
// is what a stage's params struct receives, with the param named.
func TestParamsMatchTheSharedVectors(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "testdata", "params.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Schema  string            `json:"schema"`
		Reasons map[string]string `json:"reasons"`
		Cases   []struct {
			Name   string         `json:"name"`
			Type   string         `json:"type"`
			Value  map[string]any `json:"value"`
			Accept bool           `json:"accept"`
			Result map[string]any `json:"result"`
			Reason string         `json:"reason"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if v.Schema != "pipehost.params/1" {
		t.Fatalf("schema %q", v.Schema)
	}
	phrases := map[string]string{"no_value": "has no value", "type": "expected ", "range": "does not fit"}
	for r := range v.Reasons {
		if phrases[r] == "" {
			t.Fatalf("no phrase for reason %s", r)
		}
	}
	if len(v.Cases) < 200 {
		t.Fatalf("only %d cases", len(v.Cases))
	}
	for _, c := range v.Cases {
		read := vecReaders[c.Type]
		if read == nil {
			t.Fatalf("%s: unknown type %s", c.Name, c.Type)
		}
		got, err := read(vecValue(t, c.Value))
		switch {
		case c.Accept && err != nil:
			t.Errorf("%s: refused: %v", c.Name, err)
		case c.Accept && vecIsNaN(c.Result):
			if !vecIsNaN(vecEncode(got)) {
				t.Errorf("%s: got %v, want NaN", c.Name, got)
			}
		case c.Accept && !reflect.DeepEqual(vecEncode(got), c.Result):
			t.Errorf("%s: got %v, want %v", c.Name, vecEncode(got), c.Result)
		case !c.Accept && err == nil:
			t.Errorf("%s: accepted %v, want a %s refusal", c.Name, got, c.Reason)
		case !c.Accept && !(strings.HasPrefix(err.Error(), `param "v": `) && strings.Contains(err.Error(), phrases[c.Reason])):
			t.Errorf("%s: want a %s refusal, got: %v", c.Name, c.Reason, err)
		}
	}
}
