package seed

import (
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"strconv"
	"testing"
)

// Published reference outputs of Vigna's splitmix64.c, independent of this
// repository's generator.
func TestSplitMix64Reference(t *testing.T) {
	for _, c := range []struct {
		seed uint64
		want []uint64
	}{
		{0, []uint64{0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f, 0xf88bb8a8724c81ec, 0x1b39896a51a8749b}},
		{1234567, []uint64{6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821}},
	} {
		g := SplitMix64(c.seed)
		s := New(c.seed)
		for i, w := range c.want {
			if got := g.Next(); got != w {
				t.Errorf("SplitMix64(%d) output %d = %#x, want %#x", c.seed, i, got, w)
			}
			if got := s.Uint64(); got != w {
				t.Errorf("New(%d).Uint64() output %d = %#x, want %#x", c.seed, i, got, w)
			}
		}
	}
}

// FNV-1a 64 reference values from the algorithm's published test suite.
func TestFNV1a64Reference(t *testing.T) {
	for in, want := range map[string]uint64{"": 0xcbf29ce484222325, "a": 0xaf63dc4c8601ec8c, "foobar": 0x85944171f73967e8} {
		if got := FNV1a64(in); got != want {
			t.Errorf("FNV1a64(%q) = %#x, want %#x", in, got, want)
		}
	}
}

type vectors struct {
	Schema     string `json:"schema"`
	SplitMix64 []struct {
		Seed    string   `json:"seed"`
		Outputs []string `json:"outputs"`
	} `json:"splitmix64"`
	FNV1a64 []struct {
		Name    string `json:"name"`
		NameHex string `json:"name_hex"`
		Hash    string `json:"hash"`
	} `json:"fnv1a64"`
	StageSeeds []struct {
		RunSeed      string   `json:"run_seed"`
		Stage        string   `json:"stage"`
		StageHex     string   `json:"stage_hex"`
		StageSeed    string   `json:"stage_seed"`
		FirstOutputs []string `json:"first_outputs"`
	} `json:"stage_seeds"`
	Streams []struct {
		Seed    string   `json:"seed"`
		Uint64  []string `json:"uint64"`
		Float64 []struct {
			Bits  string  `json:"bits"`
			Value float64 `json:"value"`
		} `json:"float64"`
		Uint64n []struct {
			N      string   `json:"n"`
			Values []string `json:"values"`
		} `json:"uint64n"`
	} `json:"streams"`
	Forks    []deriveVector `json:"forks"`
	Children []deriveVector `json:"children"`
}

type deriveVector struct {
	Seed         string   `json:"seed"`
	Index        string   `json:"index"`
	Label        *string  `json:"label"`
	LabelHex     *string  `json:"label_hex"`
	DerivedSeed  string   `json:"derived_seed"`
	FirstOutputs []string `json:"first_outputs"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	const path = "../../testdata/seeds.json"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading vectors: %v", err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	if v.Schema != "pipehost.seeds/1" {
		t.Fatalf("%s: schema %q, want pipehost.seeds/1", path, v.Schema)
	}
	if len(v.SplitMix64) == 0 || len(v.StageSeeds) == 0 || len(v.Streams) == 0 || len(v.Forks) == 0 || len(v.Children) == 0 {
		t.Fatalf("%s: a section is empty", path)
	}
	return v
}

func h(t *testing.T, s string) uint64 {
	t.Helper()
	if len(s) != 18 || s[:2] != "0x" {
		t.Fatalf("vector %q is not 0x + 16 hex digits", s)
	}
	v, err := strconv.ParseUint(s[2:], 16, 64)
	if err != nil {
		t.Fatalf("vector %q: %v", s, err)
	}
	return v
}

// utf8Name checks that a name's JSON form and its hex form agree and returns it.
func utf8Name(t *testing.T, name, nameHex string) string {
	t.Helper()
	b, err := hex.DecodeString(nameHex)
	if err != nil {
		t.Fatalf("name hex %q: %v", nameHex, err)
	}
	if string(b) != name {
		t.Fatalf("name %q and its hex %q disagree", name, nameHex)
	}
	return name
}

func checkOutputs(t *testing.T, what string, s Stream, want []string) {
	t.Helper()
	for i, w := range want {
		if got := s.Uint64(); got != h(t, w) {
			t.Errorf("%s output %d = %#016x, want %s", what, i, got, w)
		}
	}
}

func TestVectors(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.SplitMix64 {
		g := SplitMix64(h(t, c.Seed))
		for i, w := range c.Outputs {
			if got := g.Next(); got != h(t, w) {
				t.Errorf("SplitMix64(%s) output %d = %#016x, want %s", c.Seed, i, got, w)
			}
		}
	}
	for _, c := range v.FNV1a64 {
		if got := FNV1a64(utf8Name(t, c.Name, c.NameHex)); got != h(t, c.Hash) {
			t.Errorf("FNV1a64(%q) = %#016x, want %s", c.Name, got, c.Hash)
		}
	}
	for _, c := range v.StageSeeds {
		run, name := h(t, c.RunSeed), utf8Name(t, c.Stage, c.StageHex)
		if got := StageSeed(run, name); got != h(t, c.StageSeed) {
			t.Errorf("StageSeed(%s, %q) = %#016x, want %s", c.RunSeed, name, got, c.StageSeed)
		}
		checkOutputs(t, "ForStage("+c.RunSeed+", "+strconv.Quote(name)+")", ForStage(run, name), c.FirstOutputs)
		checkOutputs(t, "New("+c.RunSeed+").Child("+strconv.Quote(name)+")", New(run).Child(name), c.FirstOutputs)
	}
	for _, c := range v.Streams {
		s := New(h(t, c.Seed))
		checkOutputs(t, "New("+c.Seed+")", s, c.Uint64)
		s = New(h(t, c.Seed))
		for i, f := range c.Float64 {
			got := s.Float64()
			if math.Float64bits(got) != h(t, f.Bits) || got != f.Value {
				t.Errorf("New(%s).Float64() #%d = %v (%#016x), want %v (%s)", c.Seed, i, got, math.Float64bits(got), f.Value, f.Bits)
			}
			if got < 0 || got >= 1 {
				t.Errorf("Float64() = %v, outside [0, 1)", got)
			}
		}
		for _, n := range c.Uint64n {
			s := New(h(t, c.Seed))
			bound := h(t, n.N)
			for i, w := range n.Values {
				if got := s.Uint64n(bound); got != h(t, w) {
					t.Errorf("New(%s).Uint64n(%s) #%d = %#016x, want %s", c.Seed, n.N, i, got, w)
				}
			}
			if bound <= math.MaxInt64 {
				s := New(h(t, c.Seed))
				for i, w := range n.Values {
					if got := s.Intn(int(bound)); uint64(got) != h(t, w) {
						t.Errorf("New(%s).Intn(%d) #%d = %d, want %s", c.Seed, bound, i, got, w)
					}
				}
			}
		}
	}
	for _, c := range v.Forks {
		f := New(h(t, c.Seed)).Fork(h(t, c.Index))
		if f.Seed() != h(t, c.DerivedSeed) {
			t.Errorf("New(%s).Fork(%s).Seed() = %#016x, want %s", c.Seed, c.Index, f.Seed(), c.DerivedSeed)
		}
		checkOutputs(t, "New("+c.Seed+").Fork("+c.Index+")", f, c.FirstOutputs)
	}
	for _, c := range v.Children {
		if c.Label == nil || c.LabelHex == nil {
			t.Fatalf("child vector of %s without a label", c.Seed)
		}
		label := utf8Name(t, *c.Label, *c.LabelHex)
		ch := New(h(t, c.Seed)).Child(label)
		if ch.Seed() != h(t, c.DerivedSeed) {
			t.Errorf("New(%s).Child(%q).Seed() = %#016x, want %s", c.Seed, label, ch.Seed(), c.DerivedSeed)
		}
		checkOutputs(t, "New("+c.Seed+").Child("+strconv.Quote(label)+")", ch, c.FirstOutputs)
	}
}

// Forks and children depend on the key only: drawing from the parent first
// must not change them, and forking must not advance the parent.
func TestForkIgnoresParentPosition(t *testing.T) {
	a := ForStage(99, "terrain.fbm")
	b := ForStage(99, "terrain.fbm")
	for range 17 {
		b.Uint64()
	}
	if a.Fork(5).Seed() != b.Fork(5).Seed() || a.Child("rows").Seed() != b.Child("rows").Seed() {
		t.Fatal("a fork depends on how much the parent has drawn")
	}
	c := ForStage(99, "terrain.fbm")
	_ = c.Fork(1)
	_ = c.Child("x")
	if c.Uint64() != a.Uint64() {
		t.Fatal("forking advanced the parent stream")
	}
}

// Distinct names, indices and run seeds give distinct seeds, including the run
// seeds that would alias under a bare runSeed^hash definition.
func TestNoCollisions(t *testing.T) {
	seen := map[uint64]string{}
	add := func(v uint64, what string) {
		if prev, ok := seen[v]; ok {
			t.Fatalf("%s collides with %s (%#x)", what, prev, v)
		}
		seen[v] = what
	}
	names := []string{"", "a", "b", "ab", "ba", "terrain", "terrain.fbm", "terrain.fbm#2", "Höhe", "Hohe"}
	for r := uint64(0); r < 64; r++ {
		for _, n := range names {
			add(StageSeed(r, n), "StageSeed("+strconv.FormatUint(r, 10)+", "+strconv.Quote(n)+")")
		}
	}
	h1, h2 := FNV1a64("a"), FNV1a64("b")
	if StageSeed(7, "a") == StageSeed(7^h1^h2, "b") {
		t.Fatal("run seeds r and r^h(a)^h(b) alias stages a and b")
	}
	s := New(1)
	for i := uint64(0); i < 4096; i++ {
		add(s.Fork(i).Seed(), "New(1).Fork("+strconv.FormatUint(i, 10)+")")
	}
}

func TestUint64nUniform(t *testing.T) {
	s := New(2024)
	const n, draws = 7, 70000
	var counts [n]int
	for range draws {
		counts[s.Intn(n)]++
	}
	// Chi-square with 6 degrees of freedom; 22.46 is the 0.999 quantile.
	chi := 0.0
	for _, c := range counts {
		d := float64(c) - draws/n
		chi += d * d / (draws / n)
	}
	if chi > 22.46 {
		t.Fatalf("Intn(7) counts %v: chi-square %.1f > 22.46", counts, chi)
	}
}

func TestPanics(t *testing.T) {
	for name, f := range map[string]func(){
		"Uint64n(0)": func() { s := New(1); s.Uint64n(0) },
		"Intn(0)":    func() { s := New(1); s.Intn(0) },
		"Intn(-1)":   func() { s := New(1); s.Intn(-1) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s did not panic", name)
				}
			}()
			f()
		}()
	}
}

func BenchmarkUint64(b *testing.B) {
	s := New(1)
	var x uint64
	for b.Loop() {
		x ^= s.Uint64()
	}
	sink = x
}

func BenchmarkFloat64(b *testing.B) {
	s := New(1)
	var x float64
	for b.Loop() {
		x += s.Float64()
	}
	sink = uint64(x)
}

func BenchmarkStageSeed(b *testing.B) {
	var x uint64
	for b.Loop() {
		x ^= StageSeed(x, "terrain.fbm")
	}
	sink = x
}

var sink uint64
