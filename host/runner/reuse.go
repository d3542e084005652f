package runner

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/pipehost/pipehost/host/dataset"
)

// Datasets are rewritten only when what they are made of changed. Every
// artifact records a key: a digest of everything its bytes depend on (the
// output's content digest, its handle, the georeference, the metadata tags,
// the format and preview options, and the writing program itself). A rerun
// whose outputs come from the cache finds the same keys in the previous
// metadata.json and keeps those files, after checking that each still holds
// exactly the bytes recorded for it (size and SHA-256): a file edited,
// truncated or removed since is written again. So a cached rerun costs a read
// of the datasets, not their encoding (COG overviews, compression, previews).

// priorArtifacts reads the artifacts the last run recorded in dir's
// metadata.json, by path. Anything unreadable means no reuse, never an error.
func priorArtifacts(dir string) map[string]dataset.Artifact {
	b, err := os.ReadFile(filepath.Join(dir, "metadata.json"))
	if err != nil {
		return nil
	}
	var doc struct {
		Artifacts []dataset.Artifact `json:"artifacts"`
	}
	if json.Unmarshal(b, &doc) != nil {
		return nil
	}
	m := make(map[string]dataset.Artifact, len(doc.Artifacts))
	for _, a := range doc.Artifacts {
		if a.Key != "" {
			m[a.Path] = a
		}
	}
	return m
}

// programID names the running pipehost build: a rebuilt binary has a new
// size, modification time or inode, so its datasets are never taken for
// the old one's.
var programID = sync.OnceValue(func() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	st, err := os.Stat(exe)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s|%d|%d", exe, st.Size(), st.ModTime().UnixNano())
})

// artifactKey digests the parts an artifact's bytes are made of. parts must
// marshal deterministically (structs, maps with string keys, protobuf
// messages already in their canonical bytes).
func artifactKey(version string, parts ...any) (string, bool) {
	id := programID()
	if id == "" {
		return "", false
	}
	b, err := json.Marshal(append([]any{version, id}, parts...))
	if err != nil {
		return "", false
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), true
}

// reuse returns the previous run's artifact at path if its key is key and
// the file still holds exactly the bytes recorded for it.
func reuse(w *dataset.Writer, prior map[string]dataset.Artifact, path, key string) (dataset.Artifact, bool) {
	a, ok := prior[path]
	if !ok || a.Key != key {
		return dataset.Artifact{}, false
	}
	return a, w.Holds(a)
}
