package shm

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// handleVectors is testdata/handles.json (go run ./shm/internal/genvectors).
type handleVectors struct {
	Schema  string            `json:"schema"`
	Reasons map[string]string `json:"reasons"`
	Cases   []struct {
		Name     string `json:"name"`
		RealSize string `json:"real_size"`
		Handle   struct {
			SegmentID   string   `json:"segment_id"`
			SegmentSize string   `json:"segment_size"`
			Offset      string   `json:"offset"`
			Nbytes      string   `json:"nbytes"`
			DType       int32    `json:"dtype"`
			Shape       []string `json:"shape"`
			Strides     []string `json:"strides"`
			Kind        int32    `json:"kind"`
			Level       uint32   `json:"level"`
			Format      int32    `json:"format"`
			Digest      string   `json:"digest"`
		} `json:"handle"`
		Accept bool   `json:"accept"`
		Reason string `json:"reason"`
		Dense  *bool  `json:"dense"`
	} `json:"cases"`
}

// reasonPhrases ties each reason class of the vectors to the words
// Validate uses for it, so a reject for the wrong reason fails too.
var reasonPhrases = map[string]string{
	"segment_size":          "does not match the segment's real size",
	"unaligned_offset":      "-byte aligned",
	"out_of_bounds":         "runs past the segment",
	"digest_length":         "(SHA-256)",
	"unknown_format":        "unknown format",
	"unknown_dtype":         "unknown dtype",
	"rank_mismatch":         "dimensions but strides has",
	"zero_stride":           "(strides must be positive)",
	"stride_not_multiple":   "not a multiple of the",
	"overflow":              "overflows",
	"extent_exceeds_nbytes": "but nbytes is",
	"arrow_shape":           "has no shape or strides",
}

func parseU64(t *testing.T, s string) uint64 {
	t.Helper()
	if !strings.HasPrefix(s, "0x") || len(s) != 18 {
		t.Fatalf("vector value %q is not 0x + 16 hex digits", s)
	}
	v, err := strconv.ParseUint(s[2:], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestValidateMatchesHandleVectors(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "testdata", "handles.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v handleVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if v.Schema != "pipehost.handles/1" {
		t.Fatalf("schema %q", v.Schema)
	}
	for r := range v.Reasons {
		if _, ok := reasonPhrases[r]; !ok {
			t.Errorf("reason class %q has no phrase in this test", r)
		}
	}
	if len(v.Cases) < 50 {
		t.Fatalf("only %d cases", len(v.Cases))
	}
	var accepted, rejected int
	for _, c := range v.Cases {
		hj := c.Handle
		digest, err := hex.DecodeString(hj.Digest)
		if err != nil {
			t.Fatalf("%s: digest: %v", c.Name, err)
		}
		h := &pb.Handle{
			SegmentId: parseU64(t, hj.SegmentID), SegmentSize: parseU64(t, hj.SegmentSize),
			Offset: parseU64(t, hj.Offset), Nbytes: parseU64(t, hj.Nbytes), Dtype: pb.DType(hj.DType),
			Kind: pb.PortKind(hj.Kind), Level: hj.Level, Format: pb.Format(hj.Format), Digest: digest,
		}
		for _, s := range hj.Shape {
			h.Shape = append(h.Shape, parseU64(t, s))
		}
		for _, s := range hj.Strides {
			h.Strides = append(h.Strides, parseU64(t, s))
		}
		err = Validate(h, parseU64(t, c.RealSize))
		switch {
		case c.Accept && err != nil:
			t.Errorf("%s: rejected, want accepted: %v", c.Name, err)
		case c.Accept:
			accepted++
			if c.Dense == nil {
				t.Errorf("%s: accepted case without dense", c.Name)
			} else if got := IsDense(h); got != *c.Dense {
				t.Errorf("%s: IsDense = %v, want %v", c.Name, got, *c.Dense)
			}
		case err == nil:
			t.Errorf("%s: accepted, want rejected (%s)", c.Name, c.Reason)
		default:
			rejected++
			phrase, ok := reasonPhrases[c.Reason]
			if !ok {
				t.Errorf("%s: unknown reason class %q", c.Name, c.Reason)
				continue
			}
			if !errors.Is(err, ErrInvalidHandle) {
				t.Errorf("%s: error does not wrap ErrInvalidHandle: %v", c.Name, err)
			}
			if !strings.Contains(err.Error(), phrase) {
				t.Errorf("%s: rejected for another reason than %s: %v", c.Name, c.Reason, err)
			}
			if want := "segment " + strconv.FormatUint(h.GetSegmentId(), 10); !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error does not name the segment (%s): %v", c.Name, want, err)
			}
		}
	}
	if accepted == 0 || rejected == 0 {
		t.Errorf("%d accepted, %d rejected: want both", accepted, rejected)
	}
}
