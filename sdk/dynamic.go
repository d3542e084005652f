package sdk

import (
	"fmt"
	"io"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// dynamicPort checks that name is a table or blob output of this stage and
// not yet produced.
func (c *Context) dynamicPort(name string) (pb.PortKind, error) {
	var port *pb.Port
	for _, p := range c.desc.GetOutputs() {
		if p.GetName() == name {
			port = p
		}
	}
	if port == nil {
		return 0, fmt.Errorf("stage kind %s has no output %q", c.Kind(), name)
	}
	if port.GetKind() == pb.PortKind_PORT_KIND_GRID {
		return 0, fmt.Errorf("output %q is a grid: use OutputGrid", name)
	}
	if c.data == nil || c.data.handOff == nil {
		return 0, fmt.Errorf("output %q: this plugin has no fd channel", name)
	}
	for _, d := range c.data.dynamic {
		if d.port == name {
			return 0, fmt.Errorf("output %q was already produced in this run", name)
		}
	}
	return port.GetKind(), nil
}

// OutputWriter returns a writer for a table or blob output of unknown size.
// Bytes go straight into shared memory; the host receives the segment when
// the run function returns. For a table output, write an Arrow IPC file
// (package sdk/table does it for you).
func (c *Context) OutputWriter(name string) (io.Writer, error) {
	c.data.mu.Lock()
	defer c.data.mu.Unlock()
	kind, err := c.dynamicPort(name)
	if err != nil {
		return nil, err
	}
	w, err := shm.NewWriter(c.Stage() + "." + name)
	if err != nil {
		return nil, err
	}
	format := pb.Format_FORMAT_RAW
	if kind == pb.PortKind_PORT_KIND_TABLE {
		format = pb.Format_FORMAT_ARROW_IPC
	}
	c.data.dynamic = append(c.data.dynamic, &dynOutput{port: name, format: format, w: w})
	return w, nil
}

// NewBlob allocates a blob output of size bytes and returns it writable;
// the view is valid until the run function returns.
func (c *Context) NewBlob(name string, size int) ([]byte, error) {
	c.data.mu.Lock()
	defer c.data.mu.Unlock()
	kind, err := c.dynamicPort(name)
	if err != nil {
		return nil, err
	}
	if kind != pb.PortKind_PORT_KIND_BLOB {
		return nil, fmt.Errorf("output %q is a table: use OutputWriter or package sdk/table", name)
	}
	seg, err := shm.Create(c.Stage()+"."+name, int64(size))
	if err != nil {
		return nil, err
	}
	m, err := seg.MapRW()
	if err != nil {
		seg.Close()
		return nil, err
	}
	if int64(size) >= populateMin {
		m.Populate()
	}
	c.data.dynamic = append(c.data.dynamic, &dynOutput{port: name, format: pb.Format_FORMAT_RAW, seg: seg, m: m})
	return m.Bytes(), nil
}

// AdoptOutput hands seg, a segment the stage made itself (shm.Create), to
// the host as the table or blob output name. Use it when the bytes come
// from code that fills its own memfd, or to seal the output before it
// leaves the plugin (seg.SealWrite()); the host accepts a segment that is
// already write-sealed as it is, and seals any other. Every writable
// mapping of seg must be unmapped before the run function returns, in this
// process and in any other, or the host fails the stage. A table output
// must hold an Arrow IPC file. The Context owns seg from now on and closes
// it when the run ends, also when AdoptOutput fails.
func (c *Context) AdoptOutput(name string, seg *shm.Segment) error {
	c.data.mu.Lock()
	defer c.data.mu.Unlock()
	kind, err := c.dynamicPort(name)
	if err != nil {
		seg.Close()
		return err
	}
	format := pb.Format_FORMAT_RAW
	if kind == pb.PortKind_PORT_KIND_TABLE {
		format = pb.Format_FORMAT_ARROW_IPC
	}
	c.data.dynamic = append(c.data.dynamic, &dynOutput{port: name, format: format, seg: seg})
	return nil
}
