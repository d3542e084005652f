package remote

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// File is one file of an action's input root.
type File struct {
	// Path is slash-separated and relative to the input root.
	Path       string
	Blob       Blob
	Executable bool
}

// InputRoot encodes files as REAPI Directory messages. It returns the root
// directory's digest and every blob the tree needs (directories and files),
// ready for Upload.
func InputRoot(files []File) (Digest, []Blob, error) {
	type dir struct {
		files map[string]File
		dirs  map[string]*dir
	}
	newDir := func() *dir { return &dir{files: map[string]File{}, dirs: map[string]*dir{}} }
	root := newDir()
	for _, f := range files {
		clean := path.Clean(f.Path)
		if clean == "." || strings.HasPrefix(clean, "../") || clean == ".." || path.IsAbs(clean) {
			return Digest{}, nil, fmt.Errorf("input root: %q is not a relative path inside the root", f.Path)
		}
		parts := strings.Split(clean, "/")
		d := root
		for _, p := range parts[:len(parts)-1] {
			if _, clash := d.files[p]; clash {
				return Digest{}, nil, fmt.Errorf("input root: %q is both a file and a directory", p)
			}
			if d.dirs[p] == nil {
				d.dirs[p] = newDir()
			}
			d = d.dirs[p]
		}
		name := parts[len(parts)-1]
		if _, dup := d.files[name]; dup || d.dirs[name] != nil {
			return Digest{}, nil, fmt.Errorf("input root: %q given twice", f.Path)
		}
		d.files[name] = f
	}
	var blobs []Blob
	det := proto.MarshalOptions{Deterministic: true}
	var encode func(d *dir) Digest
	encode = func(d *dir) Digest {
		msg := &repb.Directory{}
		for _, name := range sortedKeys(d.dirs) {
			msg.Directories = append(msg.Directories, &repb.DirectoryNode{Name: name, Digest: toPB(encode(d.dirs[name]))})
		}
		for _, name := range sortedKeys(d.files) {
			f := d.files[name]
			msg.Files = append(msg.Files, &repb.FileNode{Name: name, Digest: toPB(f.Blob.Digest), IsExecutable: f.Executable})
			blobs = append(blobs, f.Blob)
		}
		b, _ := det.Marshal(msg)
		blob := BytesBlob(b)
		blobs = append(blobs, blob)
		return blob.Digest
	}
	return encode(root), blobs, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Platform turns properties into the sorted REAPI form (a server compares
// platforms exactly).
func Platform(props map[string]string) *repb.Platform {
	p := &repb.Platform{}
	for _, k := range sortedKeys(props) {
		p.Properties = append(p.Properties, &repb.Platform_Property{Name: k, Value: props[k]})
	}
	return p
}

// ActionSpec is a command to run remotely.
type ActionSpec struct {
	// Args is the command line; Args[0] is a path in the input root or an
	// absolute path on the worker.
	Args []string
	Env  map[string]string
	// Inputs make up the input root (the working directory).
	Inputs []File
	// OutputPaths are the files and directories the command leaves for the
	// client, relative to the working directory.
	OutputPaths []string
	Platform    map[string]string
	// Timeout bounds the command on the worker (0: the server's default).
	Timeout time.Duration
	// DoNotCache keeps the server from caching the result.
	DoNotCache bool
}

// PrepareAction uploads what the action needs that the server lacks (input
// files, directories, Command and Action) and returns the action's digest.
func (c *Client) PrepareAction(ctx context.Context, a ActionSpec) (Digest, error) {
	det := proto.MarshalOptions{Deterministic: true}
	root, blobs, err := InputRoot(a.Inputs)
	if err != nil {
		return Digest{}, err
	}
	cmd := &repb.Command{Arguments: a.Args, OutputPaths: append([]string(nil), a.OutputPaths...), Platform: Platform(a.Platform)}
	sort.Strings(cmd.OutputPaths)
	for _, k := range sortedKeys(a.Env) {
		cmd.EnvironmentVariables = append(cmd.EnvironmentVariables, &repb.Command_EnvironmentVariable{Name: k, Value: a.Env[k]})
	}
	cmdBytes, _ := det.Marshal(cmd)
	cmdBlob := BytesBlob(cmdBytes)
	act := &repb.Action{CommandDigest: toPB(cmdBlob.Digest), InputRootDigest: toPB(root), DoNotCache: a.DoNotCache, Platform: Platform(a.Platform)}
	if a.Timeout > 0 {
		act.Timeout = durationpb.New(a.Timeout)
	}
	actBytes, _ := det.Marshal(act)
	actBlob := BytesBlob(actBytes)
	if _, err := c.Upload(ctx, append(blobs, cmdBlob, actBlob)); err != nil {
		return Digest{}, err
	}
	return actBlob.Digest, nil
}

// OutputFile finds an output file of a result by path.
func OutputFile(ar *repb.ActionResult, p string) (Digest, bool) {
	for _, f := range ar.GetOutputFiles() {
		if f.GetPath() == p {
			return fromPB(f.GetDigest()), true
		}
	}
	return Digest{}, false
}
