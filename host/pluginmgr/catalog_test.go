package pluginmgr

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
)

// shortRacyWindow lets a test trust files it has just written, after a
// pause longer than the window.
func shortRacyWindow(t *testing.T) {
	old := racyWindow
	racyWindow = 20 * time.Millisecond
	t.Cleanup(func() { racyWindow = old })
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// The digest memo re-hashes a file only when its stat changes: same-size
// rewrites, touches and replacements are all seen; a file changed just
// before it was hashed is not remembered (it could change again unseen).
func TestDigestMemo(t *testing.T) {
	shortRacyWindow(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "p")
	write := func(b string) {
		if err := os.WriteFile(bin, []byte(b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	catDir := filepath.Join(dir, "cat")
	check := func(c *Catalog, want string, hashed int) {
		t.Helper()
		d, err := c.Digest(bin)
		if err != nil {
			t.Fatal(err)
		}
		if d != sum([]byte(want)) {
			t.Fatalf("digest %s, want that of %q", d, want)
		}
		if c.Hashed() != hashed {
			t.Fatalf("hashed %d times, want %d", c.Hashed(), hashed)
		}
	}
	write("version one")
	c := OpenCatalog(catDir, nil)
	check(c, "version one", 1) // racy: just written
	check(c, "version one", 2)
	time.Sleep(3 * racyWindow)
	check(c, "version one", 3) // now old enough to be remembered
	check(c, "version one", 3)
	c.Flush()
	// A new process reads the memo from disk.
	c = OpenCatalog(catDir, nil)
	check(c, "version one", 0)
	// Same size, new bytes, in place.
	write("version two")
	time.Sleep(3 * racyWindow)
	check(c, "version two", 1)
	check(c, "version two", 1)
	// Only the times change.
	now := time.Now()
	os.Chtimes(bin, now, now)
	time.Sleep(3 * racyWindow)
	check(c, "version two", 2)
	// Replaced by rename (a new inode), as builds install binaries.
	tmp := bin + ".new"
	os.WriteFile(tmp, []byte("version 3!!"), 0o755)
	os.Rename(tmp, bin)
	time.Sleep(3 * racyWindow)
	check(c, "version 3!!", 3)
	check(c, "version 3!!", 3)
	c.Flush()

	// A corrupt memo is ignored with a reason, and rewritten.
	memo := filepath.Join(catDir, "digests.json")
	os.WriteFile(memo, []byte(`{"format":"pipehost-plugin-digests/1","entries":{`), 0o644)
	var warned []string
	c = OpenCatalog(catDir, func(m string) { warned = append(warned, m) })
	if len(warned) != 1 || !strings.Contains(warned[0], memo) || !strings.Contains(warned[0], "unexpected end of JSON") {
		t.Fatalf("warnings %q", warned)
	}
	check(c, "version 3!!", 1)
	c.Flush()
	if c2 := OpenCatalog(catDir, func(m string) { t.Errorf("after rewrite: %s", m) }); c2.memo[bin].SHA256 != sum([]byte("version 3!!")) {
		t.Fatalf("memo not rewritten: %+v", c2.memo)
	}
}

// Descriptor files round-trip; a corrupt, foreign or stale one is ignored
// with its reason, and Record rewrites it.
func TestDescriptorFiles(t *testing.T) {
	dir := t.TempDir()
	var warned []string
	c := OpenCatalog(dir, func(m string) { warned = append(warned, m) })
	d := sum([]byte("binary"))
	resp := &pb.DescribeResponse{Sdk: "go", SdkVersion: "0.1.0", Stages: []*pb.StageDescriptor{
		{Kind: "a.fill", Version: "1.0.0", Doc: "fills, with a \"quote\", ünïcode and <&> (which JSON may escape)"},
		{Kind: "a.pass", Version: "2.0.0"},
	}}
	if got, why := c.Lookup(d); got != nil || why != "" {
		t.Fatalf("empty catalog: %v %q", got, why)
	}
	if err := c.Record(d, resp); err != nil {
		t.Fatal(err)
	}
	got, why := c.Lookup(d)
	if !proto.Equal(got, resp) || why != "" || len(warned) > 0 {
		t.Fatalf("round trip: %v %q %q", got, why, warned)
	}
	path := c.descPath(d)
	good, _ := os.ReadFile(path)
	for _, tc := range []struct {
		name, content, why string
		warn               bool
	}{
		{"truncated", string(good[:len(good)/2]), "corrupt: unexpected end of JSON input", true},
		{"flipped", strings.Replace(string(good), "a.pass", "a.past", 1), "corrupt: the descriptors do not match their checksum", true},
		{"foreign format", strings.Replace(string(good), "pipehost-plugin-descriptors/1", "something-else/7", 1), `foreign: format "something-else/7"`, true},
		{"other binary", strings.Replace(string(good), d, sum([]byte("other")), 1), "foreign: it describes binary " + sum([]byte("other"))[:12], true},
		{"other revision", strings.Replace(string(good), `"protocol_revision":1`, `"protocol_revision":99`, 1), "described under protocol revision 99", false},
	} {
		warned = nil
		c.warned = map[string]bool{}
		if tc.content == string(good) {
			t.Fatalf("%s: the edit changed nothing", tc.name)
		}
		os.WriteFile(path, []byte(tc.content), 0o644)
		got, why := c.Lookup(d)
		if got != nil || !strings.HasPrefix(why, tc.why) {
			t.Errorf("%s: got %v, reason %q, want %q", tc.name, got, why, tc.why)
		}
		if tc.warn != (len(warned) == 1) || (tc.warn && !strings.Contains(warned[0], path)) {
			t.Errorf("%s: warnings %q", tc.name, warned)
		}
		if err := c.Record(d, resp); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.Lookup(d); !proto.Equal(got, resp) {
			t.Errorf("%s: not rewritten", tc.name)
		}
	}
	// Writes are atomic: no temporary file is left beside the entry.
	if left, _ := filepath.Glob(filepath.Join(dir, "desc", ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// A catalog that cannot be written says so once and keeps working: the
// digests are still computed, nothing is remembered.
func TestUnwritableCatalog(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "not-a-dir")
	os.WriteFile(file, nil, 0o644)
	bin := filepath.Join(dir, "p")
	os.WriteFile(bin, []byte("bytes"), 0o755)
	var warned []string
	c := OpenCatalog(filepath.Join(file, "plugins"), func(m string) { warned = append(warned, m) })
	for i := 0; i < 3; i++ {
		d, err := c.Digest(bin)
		if err != nil || d != sum([]byte("bytes")) {
			t.Fatalf("digest %q, %v", d, err)
		}
		if err := c.Record(d, &pb.DescribeResponse{Stages: []*pb.StageDescriptor{{Kind: "k"}}}); err == nil {
			t.Fatal("Record into a path under a file succeeded")
		}
		if got, _ := c.Lookup(d); got != nil {
			t.Fatal("Lookup found what could not be written")
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "not remembered") || !strings.Contains(warned[0], "not a directory") {
		t.Fatalf("warnings %q", warned)
	}
}
