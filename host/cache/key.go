// Package cache stores stage outputs by content so a rerun skips what did
// not change. An entry is keyed by the SHA-256 of everything that decides a
// stage's outputs — kind and version, plugin binary digest, canonical
// params, stage seed, topology and grid, and the content digests of the
// inputs — so an upstream stage that reruns with byte-identical output
// leaves its consumers as hits (early cutoff). Output bytes live in a
// content-addressed store of SHA-256 + size digests, as in the Remote
// Execution API, so a shared remote cache can come later.
package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// Digest identifies bytes by SHA-256 (hex) and size.
type Digest struct {
	Hash string `json:"sha256"`
	Size int64  `json:"size"`
}

func (d Digest) String() string { return fmt.Sprintf("%s/%d", d.Hash, d.Size) }

// IsZero reports whether d is unset.
func (d Digest) IsZero() bool { return d.Hash == "" }

// DigestOf hashes b.
func DigestOf(b []byte) Digest {
	sum := sha256.Sum256(b)
	return Digest{Hash: hex.EncodeToString(sum[:]), Size: int64(len(b))}
}

// Input is one input's port and content digest.
type Input struct {
	Port   string `json:"port"`
	Digest Digest `json:"digest"`
}

// Parts are the components of a cache key, kept so a miss can say which
// one changed.
type Parts struct {
	Kind    string  `json:"kind"`
	Version string  `json:"version"`
	Plugin  string  `json:"plugin_sha256"`
	Params  string  `json:"params"`
	Seed    uint64  `json:"seed"`
	Grid    string  `json:"grid_sha256"`
	Outputs string  `json:"outputs"`
	Inputs  []Input `json:"inputs"`
}

// NewParts assembles the key parts of a stage run.
func NewParts(desc *pb.StageDescriptor, pluginDigest string, params map[string]*pb.Value, seed uint64,
	topo *pb.Topology, levels []*pb.GridInfo, inputs []Input) Parts {
	return StageParts(desc, pluginDigest, params, seed, GridDigest(topo, levels)).WithInputs(inputs)
}

// StageParts is every key part but the inputs' digests: what is known
// before the producers have finished, so it can be worked out while they
// run. grid is the plan's GridDigest.
func StageParts(desc *pb.StageDescriptor, pluginDigest string, params map[string]*pb.Value, seed uint64, grid string) Parts {
	return Parts{
		Kind:    desc.GetKind(),
		Version: desc.GetVersion(),
		Plugin:  pluginDigest,
		Params:  CanonicalParams(params),
		Seed:    seed,
		Grid:    grid,
		Outputs: outputSignature(desc),
	}
}

// WithInputs returns p with the inputs' digests, in port order.
func (p Parts) WithInputs(inputs []Input) Parts {
	sort.Slice(inputs, func(i, j int) bool { return inputs[i].Port < inputs[j].Port })
	p.Inputs = inputs
	return p
}

// Key is the hex SHA-256 of the parts in a length-prefixed canonical
// encoding (no JSON map-ordering or float-formatting ambiguity).
func (p Parts) Key() string {
	h := sha256.New()
	put := func(s string) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	put("pipehost-cache-key-v1")
	put(p.Kind)
	put(p.Version)
	put(p.Plugin)
	put(p.Params)
	put(strconv.FormatUint(p.Seed, 10))
	put(p.Grid)
	put(p.Outputs)
	for _, in := range p.Inputs {
		put(in.Port)
		put(in.Digest.String())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// CanonicalParams renders params sorted by name with typed values; floats
// are written by their IEEE bits so 0.1 is one key whatever the formatting.
func CanonicalParams(params map[string]*pb.Value) string {
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte('=')
		switch v := params[k].GetKind().(type) {
		case *pb.Value_BoolValue:
			fmt.Fprintf(&b, "b:%t", v.BoolValue)
		case *pb.Value_IntValue:
			fmt.Fprintf(&b, "i:%d", v.IntValue)
		case *pb.Value_FloatValue:
			fmt.Fprintf(&b, "f:%016x(%g)", math.Float64bits(v.FloatValue), v.FloatValue)
		case *pb.Value_StringValue:
			fmt.Fprintf(&b, "s:%q", v.StringValue)
		}
		b.WriteByte(';')
	}
	return b.String()
}

// GridDigest is the key part pinning the topology and the grid pyramid, the
// same for every stage of a plan.
func GridDigest(topo *pb.Topology, levels []*pb.GridInfo) string {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	b, _ := opts.Marshal(topo)
	h.Write(b)
	for _, l := range levels {
		b, _ := opts.Marshal(l)
		h.Write([]byte{byte(len(b))})
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// outputSignature pins the declared outputs (a changed dtype or level must
// not reuse old bytes even if the version was not bumped).
func outputSignature(desc *pb.StageDescriptor) string {
	var parts []string
	for _, p := range desc.GetOutputs() {
		parts = append(parts, fmt.Sprintf("%s:%d:%d:%d", p.GetName(), p.GetKind(), p.GetDtype(), p.GetLevel()))
	}
	return strings.Join(parts, ",")
}

// Explain says which parts differ between the previous run of a stage and
// this one, for the run log's miss reason.
func Explain(prev *Parts, cur Parts) string {
	if prev == nil {
		return "no earlier run of this stage in the cache"
	}
	var why []string
	if prev.Kind != cur.Kind {
		why = append(why, fmt.Sprintf("kind changed (%s → %s)", prev.Kind, cur.Kind))
	}
	if prev.Version != cur.Version {
		why = append(why, fmt.Sprintf("stage version changed (%s → %s)", prev.Version, cur.Version))
	}
	if prev.Plugin != cur.Plugin {
		why = append(why, "plugin binary changed")
	}
	if prev.Params != cur.Params {
		why = append(why, "params changed ("+paramDiff(prev.Params, cur.Params)+")")
	}
	if prev.Seed != cur.Seed {
		why = append(why, "seed changed")
	}
	if prev.Grid != cur.Grid {
		why = append(why, "topology or grid changed")
	}
	if prev.Outputs != cur.Outputs {
		why = append(why, "declared outputs changed")
	}
	old := map[string]Digest{}
	for _, in := range prev.Inputs {
		old[in.Port] = in.Digest
	}
	for _, in := range cur.Inputs {
		if d, ok := old[in.Port]; !ok {
			why = append(why, fmt.Sprintf("input %q is new", in.Port))
		} else if d != in.Digest {
			why = append(why, fmt.Sprintf("input %q changed", in.Port))
		}
		delete(old, in.Port)
	}
	for port := range old {
		why = append(why, fmt.Sprintf("input %q was removed", port))
	}
	if len(why) == 0 {
		return "same key as the last run, but its entry is gone (evicted, cleared or corrupt)"
	}
	return strings.Join(why, "; ")
}

func paramDiff(a, b string) string {
	split := func(s string) map[string]string {
		m := map[string]string{}
		for _, kv := range strings.Split(s, ";") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				m[k] = v
			}
		}
		return m
	}
	ma, mb := split(a), split(b)
	var names []string
	for k, v := range mb {
		if ma[k] != v {
			names = append(names, k)
		}
	}
	for k := range ma {
		if _, ok := mb[k]; !ok {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
