// Package paramconv holds the Go SDK's param conversion rules
// (docs/protocol.md, "Param values"): a wire value into a Go field of the
// declared type, or the reason it does not fit. It is separate from package
// sdk so that the shared vectors (testdata/params.json) can be generated
// from the very code the SDK runs.
package paramconv

import (
	"fmt"
	"math"
	"reflect"
	"strconv"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// ParseDefault parses a `default:"..."` struct tag as a value of type t.
func ParseDefault(t pb.ParamType, s string) (*pb.Value, error) {
	switch t {
	case pb.ParamType_PARAM_TYPE_BOOL:
		b, err := strconv.ParseBool(s)
		return &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: b}}, err
	case pb.ParamType_PARAM_TYPE_INT:
		i, err := strconv.ParseInt(s, 0, 64)
		return &pb.Value{Kind: &pb.Value_IntValue{IntValue: i}}, err
	case pb.ParamType_PARAM_TYPE_FLOAT:
		f, err := strconv.ParseFloat(s, 64)
		return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: f}}, err
	default:
		return &pb.Value{Kind: &pb.Value_StringValue{StringValue: s}}, nil
	}
}

// Set stores v in f (a bool, integer, float or string field) or says why
// it cannot: "has no value", "expected ..., got ..." or "... does not fit
// in ...".
func Set(f reflect.Value, v *pb.Value) error {
	if v.GetKind() == nil {
		return fmt.Errorf("has no value")
	}
	switch f.Kind() {
	case reflect.Bool:
		b, ok := v.GetKind().(*pb.Value_BoolValue)
		if !ok {
			return fmt.Errorf("expected a boolean, got %s", Describe(v))
		}
		f.SetBool(b.BoolValue)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, ok := v.GetKind().(*pb.Value_IntValue)
		if !ok {
			return fmt.Errorf("expected an integer, got %s", Describe(v))
		}
		if f.OverflowInt(i.IntValue) {
			return fmt.Errorf("%d does not fit in %s", i.IntValue, f.Type())
		}
		f.SetInt(i.IntValue)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		i, ok := v.GetKind().(*pb.Value_IntValue)
		if !ok {
			return fmt.Errorf("expected an integer, got %s", Describe(v))
		}
		if i.IntValue < 0 || f.OverflowUint(uint64(i.IntValue)) {
			return fmt.Errorf("%d does not fit in %s", i.IntValue, f.Type())
		}
		f.SetUint(uint64(i.IntValue))
	case reflect.Float32, reflect.Float64:
		switch x := v.GetKind().(type) {
		case *pb.Value_FloatValue:
			if f.Kind() == reflect.Float32 && !math.IsInf(x.FloatValue, 0) && math.Abs(x.FloatValue) > math.MaxFloat32 {
				return fmt.Errorf("%g does not fit in float32", x.FloatValue)
			}
			f.SetFloat(x.FloatValue)
		case *pb.Value_IntValue:
			// Through float64 first, as the host sends a config integer for
			// a float param: every SDK rounds the same way for float32.
			f.SetFloat(float64(x.IntValue))
		default:
			return fmt.Errorf("expected a number, got %s", Describe(v))
		}
	case reflect.String:
		s, ok := v.GetKind().(*pb.Value_StringValue)
		if !ok {
			return fmt.Errorf("expected a string, got %s", Describe(v))
		}
		f.SetString(s.StringValue)
	}
	return nil
}

// Describe names a value's kind and value for error messages.
func Describe(v *pb.Value) string {
	switch x := v.GetKind().(type) {
	case *pb.Value_BoolValue:
		return fmt.Sprintf("boolean %v", x.BoolValue)
	case *pb.Value_IntValue:
		return fmt.Sprintf("integer %d", x.IntValue)
	case *pb.Value_FloatValue:
		return fmt.Sprintf("float %g", x.FloatValue)
	case *pb.Value_StringValue:
		return fmt.Sprintf("string %q", x.StringValue)
	}
	return "nothing"
}
