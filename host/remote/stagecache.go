package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/pipehost/pipehost/host/cache"
)

// A stage cache key (host/cache Parts.Key) maps to an REAPI action: a
// Command naming the key and an empty input root. The action's result lists
// one output file per stage output, plus OutputsFile: the stage's output
// records (port, digest, handle), the remote twin of a local manifest.
const (
	// OutputsFile is the ActionResult output holding the output records.
	OutputsFile = "pipehost-outputs.json"
	// OutputDir prefixes each output's file in an ActionResult.
	OutputDir = "outputs/"
)

// ErrCorrupt marks a remote cache entry that does not hold together (its
// records disagree with its output files): it is ignored, and overwritten
// when the stage is recomputed.
var ErrCorrupt = errors.New("remote cache entry is corrupt")

// KeyAction is the action a stage cache key stands for, with the encoded
// Action and Command (which StoreKey uploads so the entry is a complete
// REAPI action).
func KeyAction(key string) (action Digest, actionBytes, commandBytes []byte) {
	det := proto.MarshalOptions{Deterministic: true}
	cmd := &repb.Command{Arguments: []string{"pipehost-cache-key-v1", key}, OutputPaths: []string{OutputsFile}}
	commandBytes, _ = det.Marshal(cmd)
	emptyDir, _ := det.Marshal(&repb.Directory{})
	act := &repb.Action{
		CommandDigest:   toPB(cache.DigestOf(commandBytes)),
		InputRootDigest: toPB(cache.DigestOf(emptyDir)),
		DoNotCache:      false,
	}
	actionBytes, _ = det.Marshal(act)
	return cache.DigestOf(actionBytes), actionBytes, commandBytes
}

// LookupKey returns the output records the remote cache holds for key, or
// nil on a miss. Nothing is downloaded but the records (inlined in the
// reply where the server supports it): a hit stays lazy, its bytes fetched
// with Download only when a stage that runs needs them.
func (c *Client) LookupKey(ctx context.Context, key string) ([]cache.OutputRecord, error) {
	action, _, _ := KeyAction(key)
	ar, err := c.GetActionResult(ctx, action, OutputsFile)
	if err != nil || ar == nil {
		return nil, err
	}
	files := map[string]*repb.OutputFile{}
	for _, f := range ar.GetOutputFiles() {
		files[f.GetPath()] = f
	}
	rf := files[OutputsFile]
	if rf == nil {
		return nil, fmt.Errorf("%w: key %s: no %s in its action result", ErrCorrupt, short(key), OutputsFile)
	}
	data := rf.GetContents()
	if d := fromPB(rf.GetDigest()); len(data) == 0 || cache.DigestOf(data) != d {
		if data, err = c.ReadBytes(ctx, d); err != nil {
			return nil, fmt.Errorf("key %s: output records: %w", short(key), err)
		}
	}
	var recs []cache.OutputRecord
	if err := json.Unmarshal(data, &recs); err != nil {
		return nil, fmt.Errorf("%w: key %s: unreadable output records: %v", ErrCorrupt, short(key), err)
	}
	for _, r := range recs {
		f := files[OutputDir+r.Port]
		if f == nil || fromPB(f.GetDigest()) != r.Digest {
			return nil, fmt.Errorf("%w: key %s: output %q does not match its file in the action result", ErrCorrupt, short(key), r.Port)
		}
		if _, err := r.HandleOf(); err != nil {
			return nil, fmt.Errorf("key %s: %w", short(key), err)
		}
	}
	return recs, nil
}

// StoreKey uploads a stage's outputs (open gives the bytes of each port)
// and then records them under key. The action result is written last, after
// every blob it names is in the CAS, so an upload cut short leaves no entry
// pointing at missing bytes.
func (c *Client) StoreKey(ctx context.Context, key string, recs []cache.OutputRecord, open func(port string) (io.ReaderAt, error)) error {
	recs = append([]cache.OutputRecord(nil), recs...)
	sort.Slice(recs, func(i, j int) bool { return recs[i].Port < recs[j].Port })
	recBytes, err := json.Marshal(recs)
	if err != nil {
		return err
	}
	action, actionBytes, commandBytes := KeyAction(key)
	emptyDir, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&repb.Directory{})
	blobs := []Blob{BytesBlob(recBytes), BytesBlob(actionBytes), BytesBlob(commandBytes), BytesBlob(emptyDir)}
	ar := &repb.ActionResult{}
	for _, r := range recs {
		src, err := open(r.Port)
		if err != nil {
			return fmt.Errorf("key %s: output %q: %w", short(key), r.Port, err)
		}
		blobs = append(blobs, Blob{Digest: r.Digest, Src: src})
		ar.OutputFiles = append(ar.OutputFiles, &repb.OutputFile{Path: OutputDir + r.Port, Digest: toPB(r.Digest)})
	}
	ar.OutputFiles = append(ar.OutputFiles, &repb.OutputFile{Path: OutputsFile, Digest: toPB(cache.DigestOf(recBytes))})
	sort.Slice(ar.OutputFiles, func(i, j int) bool { return ar.OutputFiles[i].Path < ar.OutputFiles[j].Path })
	if _, err := c.Upload(ctx, blobs); err != nil {
		return fmt.Errorf("key %s: %w", short(key), err)
	}
	if err := c.UpdateActionResult(ctx, action, ar); err != nil {
		return fmt.Errorf("key %s: %w", short(key), err)
	}
	return nil
}

func short(key string) string {
	if len(key) > 12 {
		return key[:12]
	}
	return key
}
