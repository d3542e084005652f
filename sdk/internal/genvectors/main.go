// Command genvectors writes the shared vectors every SDK is checked against
// for what a plugin in any language must do exactly like the Go SDK:
//
//   - testdata/params.json: a param value × the type it is read as → the
//     accepted value, or the reason it is refused (package
//     sdk/internal/paramconv, which the Go SDK runs);
//   - testdata/fdchannel.json: bytes and fds sent on a real fd channel →
//     the message received, EOF, or the reason it is rejected (shm.Channel);
//   - testdata/fdchannel-runs.json: the same for a receiver that takes runs
//     on the channel: datagrams → one whole RUN, EVENT, END or CANCEL, or
//     the reason they are rejected (shm.Channel.RecvPayload; runs.go);
//   - testdata/adopted.json: the handle a plugin returns for a dynamic
//     output it sent by ADOPT (shm.AdoptedHandle), field by field and as
//     protobuf bytes;
//   - testdata/handshake.json: the go-plugin handshake constants (package
//     wire and go-plugin itself).
//
// The expectations come from running the Go implementation, so a change of
// behaviour there shows up as a stale file (main_test.go) and then as a
// failure in the SDK that no longer agrees.
//
//	go run ./sdk/internal/genvectors [-dir testdata]
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"unsafe"

	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/pipehost/pipehost/internal/wire"
	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/sdk/internal/paramconv"
	"github.com/pipehost/pipehost/shm"
)

// Files lists what Build writes, in order.
var Files = []string{"params.json", "fdchannel.json", "fdchannel-runs.json", "adopted.json", "handshake.json"}

func u64s(v uint64) string { return fmt.Sprintf("0x%016x", v) }

// file writes the common head (schema, about, docs, encoding), then the
// given sections in order; a section of cases is written one case per line.
type file struct {
	buf   bytes.Buffer
	first bool
}

func newFile(schema, about, docs, encoding string) *file {
	f := &file{first: true}
	f.buf.WriteString("{\n")
	f.field("schema", schema)
	f.field("about", about)
	f.field("docs", docs)
	f.field("encoding", encoding)
	return f
}

func (f *file) sep() {
	if !f.first {
		f.buf.WriteString(",\n")
	}
	f.first = false
}

func mustJSON(v any) []byte {
	j, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return j
}

func (f *file) field(key string, v any) {
	f.sep()
	fmt.Fprintf(&f.buf, "  %q: %s", key, mustJSON(v))
}

// table writes an object of string → string, one entry per line, in order.
func (f *file) table(key string, rows [][2]string) {
	f.sep()
	fmt.Fprintf(&f.buf, "  %q: {\n", key)
	for i, r := range rows {
		fmt.Fprintf(&f.buf, "    %q: %s", r[0], mustJSON(r[1]))
		if i < len(rows)-1 {
			f.buf.WriteString(",")
		}
		f.buf.WriteString("\n")
	}
	f.buf.WriteString("  }")
}

func (f *file) cases(key string, cs []any) {
	f.sep()
	fmt.Fprintf(&f.buf, "  %q: [\n", key)
	for i, c := range cs {
		f.buf.WriteString("    ")
		f.buf.Write(mustJSON(c))
		if i < len(cs)-1 {
			f.buf.WriteString(",")
		}
		f.buf.WriteString("\n")
	}
	f.buf.WriteString("  ]")
}

func (f *file) bytes() []byte {
	f.buf.WriteString("\n}\n")
	return f.buf.Bytes()
}

// ---------------------------------------------------------------- params

var paramTypes = []struct {
	name string
	t    reflect.Type
}{
	{"bool", reflect.TypeOf(false)},
	{"i8", reflect.TypeOf(int8(0))},
	{"i16", reflect.TypeOf(int16(0))},
	{"i32", reflect.TypeOf(int32(0))},
	{"i64", reflect.TypeOf(int64(0))},
	{"u8", reflect.TypeOf(uint8(0))},
	{"u16", reflect.TypeOf(uint16(0))},
	{"u32", reflect.TypeOf(uint32(0))},
	{"u64", reflect.TypeOf(uint64(0))},
	{"f32", reflect.TypeOf(float32(0))},
	{"f64", reflect.TypeOf(float64(0))},
	{"string", reflect.TypeOf("")},
}

var paramReasons = [][2]string{
	{"no_value", "the Value has no kind set; message contains \"has no value\""},
	{"type", "the value's kind is not one the type takes (only an integer crosses over, to a float type); message contains \"expected\""},
	{"range", "an integer outside the integer type's range, or a finite float of magnitude above the f32 maximum for f32; message contains \"does not fit\""},
}

func vInt(i int64) *pb.Value      { return &pb.Value{Kind: &pb.Value_IntValue{IntValue: i}} }
func vFloat(x float64) *pb.Value  { return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: x}} }
func vBool(b bool) *pb.Value      { return &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: b}} }
func vString(s string) *pb.Value  { return &pb.Value{Kind: &pb.Value_StringValue{StringValue: s}} }
func vBits(bits uint64) *pb.Value { return vFloat(math.Float64frombits(bits)) }

func paramValues() []*pb.Value {
	vs := []*pb.Value{{}, vBool(false), vBool(true)}
	for _, i := range []int64{
		0, 1, -1, 127, 128, -128, -129, 255, 256, 32767, 32768, -32768, -32769, 65535, 65536,
		math.MaxInt32, math.MaxInt32 + 1, math.MinInt32, math.MinInt32 - 1, math.MaxUint32, math.MaxUint32 + 1,
		1 << 24, 1<<24 + 1, 1 << 53, 1<<53 + 1,
		// Rounds to a different float32 directly than through float64.
		1<<60 + 1<<36 + 1,
		math.MaxInt64, math.MinInt64,
	} {
		vs = append(vs, vInt(i))
	}
	maxF32 := float64(math.MaxFloat32)
	for _, x := range []float64{
		0, 1.5, -2.5, 2, -7, 0.1, 16777217, 1e-45, 1e-320, 1e308, -1e308,
		maxF32, -maxF32, math.Nextafter(maxF32, math.Inf(1)), -math.Nextafter(maxF32, math.Inf(1)),
		// Half an f32 ulp above the maximum: rounds to +Inf as f32.
		maxF32 + math.Ldexp(1, 103),
		1e39, 9.3e18, math.Inf(1), math.Inf(-1),
	} {
		vs = append(vs, vFloat(x))
	}
	vs = append(vs, vBits(0x8000000000000000), vBits(0x7ff8000000000000))
	for _, s := range []string{"", "x", "true", "1", "1.5", "héllo ✓", "a\x00b"} {
		vs = append(vs, vString(s))
	}
	return vs
}

func valueJSON(v *pb.Value) map[string]any {
	switch x := v.GetKind().(type) {
	case *pb.Value_BoolValue:
		return map[string]any{"bool": x.BoolValue}
	case *pb.Value_IntValue:
		return map[string]any{"int": strconv.FormatInt(x.IntValue, 10)}
	case *pb.Value_FloatValue:
		return map[string]any{"float_bits": u64s(math.Float64bits(x.FloatValue)),
			"float": strconv.FormatFloat(x.FloatValue, 'g', -1, 64)}
	case *pb.Value_StringValue:
		return map[string]any{"string": x.StringValue}
	}
	return map[string]any{}
}

func resultJSON(f reflect.Value) map[string]any {
	switch f.Kind() {
	case reflect.Bool:
		return map[string]any{"bool": f.Bool()}
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return map[string]any{"int": strconv.FormatInt(f.Int(), 10)}
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"int": strconv.FormatUint(f.Uint(), 10)}
	case reflect.Float32:
		return map[string]any{"f32_bits": fmt.Sprintf("0x%08x", math.Float32bits(float32(f.Float())))}
	case reflect.Float64:
		return map[string]any{"f64_bits": u64s(math.Float64bits(f.Float()))}
	case reflect.String:
		return map[string]any{"string": f.String()}
	}
	panic(f.Kind())
}

func paramReason(err error) (string, error) {
	msg := err.Error()
	var found []string
	for _, p := range [][2]string{{"no_value", "has no value"}, {"type", "expected "}, {"range", "does not fit"}} {
		if strings.Contains(msg, p[1]) {
			found = append(found, p[0])
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("cannot classify %q", msg)
	}
	return found[0], nil
}

type paramCase struct {
	Name   string         `json:"name"`
	Type   string         `json:"type"`
	Value  map[string]any `json:"value"`
	Accept bool           `json:"accept"`
	Result map[string]any `json:"result,omitempty"`
	Reason string         `json:"reason,omitempty"`
}

func buildParams() ([]byte, error) {
	f := newFile("pipehost.params/1",
		"Param conversion: a Value from RunRequest.params (or a declared default) read as a stage's typed param; generated by go run ./sdk/internal/genvectors from the Go SDK's rules (sdk/internal/paramconv).",
		"docs/protocol.md#param-values",
		"type is the param's type in the stage's language: bool; i8..i64 and u8..u64 (declared int, i64 on the wire); f32, f64 (declared float, f64 on the wire); string. value is the Value's kind: {} (no kind set), bool, int (decimal string), float (float_bits: the IEEE 754 bits, float: the shortest decimal that round-trips), string. result is the value the stage reads: bool, int (decimal), f32_bits or f64_bits (IEEE 754 bits; compare a NaN as NaN, not by bits), string. A reject names a reason class; an SDK whose language lacks a type (Python has bool, i64, f64, string) skips that type's cases.")
	var rows [][2]string
	rows = append(rows, paramReasons...)
	f.table("reasons", rows)
	var cs []any
	seen := map[string]bool{}
	used := map[string]bool{}
	for _, pt := range paramTypes {
		for _, v := range paramValues() {
			c := paramCase{Name: pt.name + " ← " + paramconv.Describe(v), Type: pt.name, Value: valueJSON(v)}
			if seen[c.Name] {
				return nil, fmt.Errorf("case %q twice", c.Name)
			}
			seen[c.Name] = true
			field := reflect.New(pt.t).Elem()
			if err := paramconv.Set(field, v); err != nil {
				r, cerr := paramReason(err)
				if cerr != nil {
					return nil, fmt.Errorf("%s: %w", c.Name, cerr)
				}
				c.Reason = r
				used[r] = true
			} else {
				c.Accept = true
				c.Result = resultJSON(field)
			}
			cs = append(cs, c)
		}
	}
	for _, r := range paramReasons {
		if !used[r[0]] {
			return nil, fmt.Errorf("params: no case for reason %s", r[0])
		}
	}
	f.cases("cases", cs)
	return f.bytes(), nil
}

// ------------------------------------------------------------- fd channel

var frameReasons = [][2]string{
	{"too_many_fds", "MSG_CTRUNC: more fds than the receiver makes room for (16); message contains \"control data truncated\""},
	{"long", "MSG_TRUNC: more than 32 bytes; message contains \"longer than 32 bytes\""},
	{"short", "fewer than 32 bytes; message contains \"bytes, want 32\""},
	{"bad_magic", "magic is not 0x44464850; message contains \"bad magic\""},
	{"bad_version", "version is not 1; message contains \"header version\""},
	{"unknown_type", "type is not 1, 2 or 3; message contains \"unknown message type\""},
	{"host_token", "a SEGMENT token outside 1 ≤ token < 2^63; message contains \"is not a host token\""},
	{"plugin_token", "an ADOPT token without the top bit; message contains \"is not a plugin token\""},
	{"fd_count", "SEGMENT or ADOPT without exactly one fd, or CLOSE with any; message contains \"fds, want\""},
}

func rawHeader(magic uint32, version, typ uint16, token, seg, size uint64) []byte {
	b := make([]byte, shm.HeaderSize)
	binary.LittleEndian.PutUint32(b[0:], magic)
	binary.LittleEndian.PutUint16(b[4:], version)
	binary.LittleEndian.PutUint16(b[6:], typ)
	binary.LittleEndian.PutUint64(b[8:], token)
	binary.LittleEndian.PutUint64(b[16:], seg)
	binary.LittleEndian.PutUint64(b[24:], size)
	return b
}

func hdr(typ uint16, token, seg, size uint64) []byte {
	return rawHeader(shm.Magic, shm.Version, typ, token, seg, size)
}

type frame struct {
	name string
	data []byte
	fds  int
}

func frames() []frame {
	const top = shm.PluginTokenBit
	const maxU = ^uint64(0)
	seg := hdr(1, 1, 7, 4096)
	var fs []frame
	add := func(name string, data []byte, fds int) { fs = append(fs, frame{name, data, fds}) }

	add("SEGMENT", seg, 1)
	add("SEGMENT with the largest host token", hdr(1, top-1, maxU, 0), 1)
	add("SEGMENT of an empty segment", hdr(1, 42, 3, 0), 1)
	add("ADOPT", hdr(2, top+1, 0, 1000), 1)
	add("ADOPT with the largest plugin token", hdr(2, maxU, 0, 1<<40), 1)
	add("ADOPT with a segment id (not checked)", hdr(2, top+5, 9, 64), 1)
	add("CLOSE", hdr(3, 0, 0, 0), 0)
	add("CLOSE with fields set (ignored)", hdr(3, 5, 6, 7), 0)

	add("zero bytes and no fd", nil, 0)

	add("zero bytes with an fd", nil, 1)
	add("1 byte", []byte{0x50}, 0)
	add("16 bytes", seg[:16], 1)
	add("31 bytes", seg[:31], 1)
	add("33 bytes", append(append([]byte{}, seg...), 0), 1)
	add("64 bytes", append(append([]byte{}, seg...), seg...), 1)
	add("17 fds", seg, 17)
	add("CLOSE with 17 fds", hdr(3, 0, 0, 0), 17)
	add("magic 0", rawHeader(0, 1, 1, 1, 7, 4096), 1)
	add("magic byte-swapped (big-endian PHFD)", rawHeader(0x50484644, 1, 1, 1, 7, 4096), 1)
	add("version 0", rawHeader(shm.Magic, 0, 1, 1, 7, 4096), 1)
	add("version 2", rawHeader(shm.Magic, 2, 1, 1, 7, 4096), 1)
	add("version 1 big-endian", rawHeader(shm.Magic, 0x0100, 1, 1, 7, 4096), 1)
	add("type 0", hdr(0, 1, 7, 4096), 1)
	add("type 4", hdr(4, 1, 7, 4096), 1)
	add("type 0xffff", hdr(0xffff, 1, 7, 4096), 0)
	add("SEGMENT type big-endian", hdr(0x0100, 1, 7, 4096), 1)
	add("SEGMENT token 0", hdr(1, 0, 7, 4096), 1)
	add("SEGMENT token 2^63", hdr(1, top, 7, 4096), 1)
	add("SEGMENT token 2^64-1", hdr(1, maxU, 7, 4096), 1)
	add("ADOPT token 0", hdr(2, 0, 0, 64), 1)
	add("ADOPT token 1", hdr(2, 1, 0, 64), 1)
	add("ADOPT token 2^63-1", hdr(2, top-1, 0, 64), 1)
	add("SEGMENT without an fd", seg, 0)
	add("SEGMENT with 2 fds", seg, 2)
	add("SEGMENT with 16 fds", seg, 16)
	add("ADOPT without an fd", hdr(2, top+1, 0, 64), 0)
	add("ADOPT with 3 fds", hdr(2, top+1, 0, 64), 3)
	add("CLOSE with an fd", hdr(3, 0, 0, 0), 1)

	add("order: too many fds before too long", append(append([]byte{}, seg...), 1, 2, 3), 17)
	add("order: too long before bad magic", append(rawHeader(0, 0, 0, 0, 0, 0), 9), 0)
	add("order: short before bad magic", []byte{0, 0, 0, 0}, 1)
	add("order: magic before version", rawHeader(0x12345678, 7, 1, 1, 7, 4096), 1)
	add("order: version before type", rawHeader(shm.Magic, 9, 9, 1, 7, 4096), 1)
	add("order: type before fd count", hdr(5, 1, 7, 4096), 2)
	add("order: host token before fd count", hdr(1, 0, 7, 4096), 0)
	add("order: plugin token before fd count", hdr(2, 3, 0, 64), 2)
	return fs
}

func frameReason(err error) (string, error) {
	msg := err.Error()
	if !errors.Is(err, shm.ErrProtocol) {
		return "", fmt.Errorf("not a protocol violation: %q", msg)
	}
	phrases := [][2]string{
		{"too_many_fds", "control data truncated"}, {"long", "longer than 32 bytes"}, {"short", "bytes, want 32"},
		{"bad_magic", "bad magic"}, {"bad_version", "header version"}, {"unknown_type", "unknown message type"},
		{"host_token", "is not a host token"}, {"plugin_token", "is not a plugin token"}, {"fd_count", "fds, want"},
	}
	var found []string
	for _, p := range phrases {
		if strings.Contains(msg, p[1]) {
			found = append(found, p[0])
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("cannot classify %q", msg)
	}
	return found[0], nil
}

// sendRaw is one sendmsg of exactly p and oob. (unix.Sendmsg adds a byte
// when p is empty and fds travel, which would change the case.)
func sendRaw(fd int, p, oob []byte) error {
	var msg unix.Msghdr
	var iov unix.Iovec
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
		msg.Iov = &iov
		msg.SetIovlen(1)
	}
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	n, _, errno := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), 0)
	if errno != 0 {
		return errno
	}
	if int(n) != len(p) {
		return fmt.Errorf("sendmsg sent %d of %d bytes", n, len(p))
	}
	return nil
}

func openFDs() (int, error) {
	es, err := os.ReadDir("/proc/self/fd")
	return len(es), err
}

type frameCase struct {
	Name    string            `json:"name"`
	Data    string            `json:"data"`
	FDs     int               `json:"fds"`
	Outcome string            `json:"outcome"`
	Message map[string]string `json:"message,omitempty"`
	Reason  string            `json:"reason,omitempty"`
}

// receive sends fr on a fresh channel pair and reports what shm.Channel.Recv
// makes of it.
func receive(fr frame) (frameCase, error) {
	c := frameCase{Name: fr.name, Data: hex.EncodeToString(fr.data), FDs: fr.fds}
	local, remote, err := shm.NewChannelPair()
	if err != nil {
		return c, err
	}
	defer local.Close()
	defer remote.Close()
	if err := sendWithFDs(int(remote.Fd()), fr.data, fr.fds); err != nil {
		return c, err
	}
	m, fd, err := local.Recv()
	switch {
	case err == io.EOF:
		c.Outcome = "eof"
	case err != nil:
		c.Outcome = "reject"
		if c.Reason, err = frameReason(err); err != nil {
			return c, err
		}
	default:
		c.Outcome = "message"
		c.Message = map[string]string{"type": strconv.Itoa(int(m.Type)), "token": u64s(m.Token),
			"segment_id": u64s(m.SegmentID), "size": u64s(m.Size)}
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	return c, nil
}

func buildFDChannel() ([]byte, error) {
	f := newFile("pipehost.fdchannel/1",
		"fd channel framing: the bytes and fds of one sendmsg on a SOCK_SEQPACKET socket pair, and what a receiver makes of them; generated by go run ./sdk/internal/genvectors from shm.Channel.Recv.",
		"docs/protocol.md#receiving",
		"data is the hex of the bytes sent in one sendmsg; fds is how many descriptors travel with it in one SCM_RIGHTS control message (any open fds; the receiver makes room for 16). outcome is message (fields of the decoded header: type in decimal, the uint64s as 0x and 16 lowercase hex digits; SEGMENT and ADOPT hand over exactly one fd), eof (a receive of zero bytes and no fds reads as the peer's end), or reject with the reason class of the first failing check, in the order of the reasons table. After a reject every fd that came with the message is closed.")
	f.table("reasons", frameReasons)
	// One pair first: the runtime's poller opens its own fds on first use.
	warm := frame{"warm-up", hdr(3, 0, 0, 0), 0}
	cs, err := receiveAll(frames(), warm, receive, func(c frameCase) string { return c.Reason },
		func(fr frame) string { return fr.name }, frameReasons)
	if err != nil {
		return nil, fmt.Errorf("fd channel: %w", err)
	}
	f.cases("cases", cs)
	return f.bytes(), nil
}

// receiveAll runs receive on every input after a warm-up, and checks that
// nothing leaked and that every reason has a case.
func receiveAll[In, Out any](ins []In, warm In, receive func(In) (Out, error), reason func(Out) string,
	name func(In) string, reasons [][2]string) ([]any, error) {
	if _, err := receive(warm); err != nil {
		return nil, err
	}
	before, err := openFDs()
	if err != nil {
		return nil, err
	}
	var cs []any
	used := map[string]bool{}
	for _, in := range ins {
		c, err := receive(in)
		if err != nil {
			return nil, fmt.Errorf("case %q: %w", name(in), err)
		}
		used[reason(c)] = true
		cs = append(cs, c)
	}
	if after, err := openFDs(); err != nil || after != before {
		return nil, fmt.Errorf("the cases leaked descriptors: %d open before, %d after (%v)", before, after, err)
	}
	for _, r := range reasons {
		if !used[r[0]] {
			return nil, fmt.Errorf("no case for reason %s", r[0])
		}
	}
	return cs, nil
}

// sendWithFDs sends data in one sendmsg on fd with n descriptors (of
// /dev/null) in one SCM_RIGHTS message.
func sendWithFDs(fd int, data []byte, n int) error {
	fds := make([]int, n)
	for i := range fds {
		var err error
		if fds[i], err = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			for _, f := range fds[:i] {
				unix.Close(f)
			}
			return err
		}
	}
	var oob []byte
	if n > 0 {
		oob = unix.UnixRights(fds...)
	}
	err := sendRaw(fd, data, oob)
	for _, f := range fds {
		unix.Close(f)
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// ---------------------------------------------------------- adopted handles

type handleJSON struct {
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
}

func list(vs []uint64) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, u64s(v))
	}
	return out
}

type adoptedCase struct {
	Name   string     `json:"name"`
	Kind   string     `json:"kind"`
	Size   string     `json:"size"`
	Handle handleJSON `json:"handle"`
	Wire   string     `json:"wire"`
}

func buildAdopted() ([]byte, error) {
	f := newFile("pipehost.adopted/1",
		"The Handle a plugin returns in Result.dynamic_outputs for a table or blob output whose segment it sent by ADOPT; generated by go run ./sdk/internal/genvectors from shm.AdoptedHandle, which the Go SDK uses.",
		"docs/protocol.md#lifecycle-of-a-runs-buffers",
		"kind is the output port's kind (table or blob); size is the segment's size. handle is every field as in handles.json (uint64s as 0x and 16 lowercase hex digits; dtype, kind and format are the proto enum numbers; digest hex). wire is the hex of the Handle's protobuf encoding (fields in number order, defaults omitted), which every SDK's protobuf library must produce byte for byte.")
	var cs []any
	for _, k := range []struct {
		name string
		kind pb.PortKind
		size []uint64
	}{
		{"blob", pb.PortKind_PORT_KIND_BLOB, []uint64{0, 1, 3, 64, 4096, 1<<32 + 5, 1 << 40}},
		{"table", pb.PortKind_PORT_KIND_TABLE, []uint64{0, 1000, 1 << 33}},
	} {
		for _, size := range k.size {
			h := shm.AdoptedHandle(k.kind, size)
			if err := shm.Validate(h, size); err != nil {
				return nil, fmt.Errorf("adopted %s of %d bytes: %w", k.name, size, err)
			}
			w, err := proto.MarshalOptions{Deterministic: true}.Marshal(h)
			if err != nil {
				return nil, err
			}
			cs = append(cs, adoptedCase{
				Name: fmt.Sprintf("%s of %d bytes", k.name, size), Kind: k.name, Size: u64s(size),
				Handle: handleJSON{
					SegmentID: u64s(h.GetSegmentId()), SegmentSize: u64s(h.GetSegmentSize()), Offset: u64s(h.GetOffset()),
					Nbytes: u64s(h.GetNbytes()), DType: int32(h.GetDtype()), Shape: list(h.GetShape()),
					Strides: list(h.GetStrides()), Kind: int32(h.GetKind()), Level: h.GetLevel(),
					Format: int32(h.GetFormat()), Digest: hex.EncodeToString(h.GetDigest()),
				},
				Wire: hex.EncodeToString(w),
			})
		}
	}
	f.cases("cases", cs)
	return f.bytes(), nil
}

// --------------------------------------------------------------- handshake

// service returns the full name of a registered gRPC service after checking
// that it has the given methods, so a go-plugin upgrade that renames one
// shows up here.
func service(name string, methods ...string) (string, error) {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return "", fmt.Errorf("service %s is not registered: %w", name, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return "", fmt.Errorf("%s is not a service", name)
	}
	for _, m := range methods {
		if sd.Methods().ByName(protoreflect.Name(m)) == nil {
			return "", fmt.Errorf("service %s has no method %s", name, m)
		}
	}
	return string(sd.FullName()), nil
}

func buildHandshake() ([]byte, error) {
	f := newFile("pipehost.handshake/1",
		"What a plugin in any language must match to be started by the host: go-plugin's handshake and services, as the Go host and SDK use them; generated by go run ./sdk/internal/genvectors from package wire, package shm and go-plugin itself.",
		"docs/protocol.md#launch-and-handshake",
		"Names and values as the plugin sees them. handshake_line is the one line a plugin writes to stdout, with {core}, {app} and {address} filled in. Service and method names are gRPC full names; method paths are what goes on the wire.")
	controller, err := service("plugin.GRPCController", "Shutdown")
	if err != nil {
		return nil, err
	}
	stdio, err := service("plugin.GRPCStdio", "StreamStdio")
	if err != nil {
		return nil, err
	}
	if _, err := service(grpc_health_v1.Health_ServiceDesc.ServiceName, "Check"); err != nil {
		return nil, err
	}
	f.field("core_protocol_version", plugin.CoreProtocolVersion)
	f.field("app_protocol_version", wire.Handshake.ProtocolVersion)
	f.field("magic_cookie_key", wire.Handshake.MagicCookieKey)
	f.field("magic_cookie_value", wire.Handshake.MagicCookieValue)
	f.table("env", [][2]string{
		{"protocol_versions", "PLUGIN_PROTOCOL_VERSIONS"},
		{"unix_socket_dir", plugin.EnvUnixSocketDir},
		{"client_cert", "PLUGIN_CLIENT_CERT"},
		{"min_port", "PLUGIN_MIN_PORT"},
		{"max_port", "PLUGIN_MAX_PORT"},
		{"fd_channel", shm.EnvFDChannel},
	})
	f.field("fd_channel_fd", shm.ChildFD)
	f.field("handshake_line", "{core}|{app}|unix|{address}|grpc\n")
	f.field("network", "unix")
	f.field("protocol", "grpc")
	f.field("socket_name_max_bytes", 24)
	f.field("health_service", grpc_health_v1.Health_ServiceDesc.ServiceName)
	f.field("health_check_path", "/"+grpc_health_v1.Health_ServiceDesc.ServiceName+"/Check")
	f.field("health_service_name", plugin.GRPCServiceName)
	f.field("health_status", grpc_health_v1.HealthCheckResponse_SERVING.String())
	f.field("controller_service", controller)
	f.field("controller_shutdown_path", "/"+controller+"/Shutdown")
	f.field("stdio_service", stdio)
	f.field("stdio_stream_path", "/"+stdio+"/StreamStdio")
	f.field("stage_service", pb.Stage_ServiceDesc.ServiceName)
	f.field("protocol_revision", wire.ProtocolRevision)
	f.field("max_receive_message_bytes", wire.MaxMessageSize)
	return f.bytes(), nil
}

// Build returns every file's bytes, keyed by name.
func Build() (map[string][]byte, error) {
	out := map[string][]byte{}
	for name, build := range map[string]func() ([]byte, error){
		"params.json": buildParams, "fdchannel.json": buildFDChannel, "fdchannel-runs.json": buildFDChannelRuns,
		"adopted.json": buildAdopted, "handshake.json": buildHandshake,
	} {
		b, err := build()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = b
	}
	return out, nil
}

func main() {
	dir := flag.String("dir", "testdata", "directory to write the files into")
	flag.Parse()
	files, err := Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, "genvectors:", err)
		os.Exit(1)
	}
	for _, name := range Files {
		if err := os.WriteFile(filepath.Join(*dir, name), files[name], 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "genvectors:", err)
			os.Exit(1)
		}
	}
}
