package sdk

import (
	"fmt"

	pb "github.com/pipehost/pipehost/proto/pipehostv1"
	"github.com/pipehost/pipehost/shm"
)

// Grid is a typed, zero-copy view of a grid buffer: row-major, Height rows
// of Width elements. Input grids are read-only memory: writing to one
// faults the process.
type Grid[T shm.Elem] struct {
	Data   []T
	Width  int
	Height int
	Level  int
}

// At returns the element at column x, row y.
func (g Grid[T]) At(x, y int) T { return g.Data[y*g.Width+x] }

// Set stores v at column x, row y (outputs only).
func (g Grid[T]) Set(x, y int, v T) { g.Data[y*g.Width+x] = v }

// Row returns row y.
func (g Grid[T]) Row(y int) []T { return g.Data[y*g.Width : (y+1)*g.Width] }

// InputGrid maps the input grid on port name as a read-only []T view.
func InputGrid[T shm.Elem](c *Context, name string) (Grid[T], error) {
	return grid[T](c, name, true)
}

// OutputGrid maps the output grid on port name as a writable []T view. The
// view is valid until the run function returns.
func OutputGrid[T shm.Elem](c *Context, name string) (Grid[T], error) {
	return grid[T](c, name, false)
}

func grid[T shm.Elem](c *Context, name string, input bool) (Grid[T], error) {
	what := "output"
	if input {
		what = "input"
	}
	if c.data == nil {
		return Grid[T]{}, fmt.Errorf("%s %q: this run has no data", what, name)
	}
	c.data.mu.Lock()
	defer c.data.mu.Unlock()
	set := c.data.outputs
	if input {
		set = c.data.inputs
	}
	b, ok := set[name]
	if !ok {
		return Grid[T]{}, fmt.Errorf("stage %s has no %s %q bound in this run", c.Stage(), what, name)
	}
	h := b.binding.GetHandle()
	if h.GetKind() != pb.PortKind_PORT_KIND_GRID || len(h.GetShape()) != 2 || !shm.IsDense(h) {
		return Grid[T]{}, fmt.Errorf("%s %q is not a dense 2-D grid", what, name)
	}
	if want := shm.DTypeFor[T](); h.GetDtype() != want {
		return Grid[T]{}, fmt.Errorf("%s %q holds %s, not %s", what, name, DType(h.GetDtype()), DType(want))
	}
	raw, err := b.bytes()
	if err != nil {
		return Grid[T]{}, err
	}
	data, err := shm.View[T](raw)
	if err != nil {
		return Grid[T]{}, fmt.Errorf("%s %q: %w", what, name, err)
	}
	return Grid[T]{Data: data, Width: int(h.GetShape()[1]), Height: int(h.GetShape()[0]), Level: int(h.GetLevel())}, nil
}

// InputBytes returns the raw bytes of any input (grid, table or blob),
// read-only.
func (c *Context) InputBytes(name string) ([]byte, BufferInfo, error) {
	if c.data == nil {
		return nil, BufferInfo{}, fmt.Errorf("input %q: this run has no data", name)
	}
	c.data.mu.Lock()
	defer c.data.mu.Unlock()
	b, ok := c.data.inputs[name]
	if !ok {
		return nil, BufferInfo{}, fmt.Errorf("stage %s has no input %q bound in this run", c.Stage(), name)
	}
	raw, err := b.bytes()
	return raw, bufferInfo(b.binding.GetHandle()), err
}

// HasInput reports whether an (optional) input is wired in this run.
func (c *Context) HasInput(name string) bool {
	if c.data == nil {
		return false
	}
	c.data.mu.Lock()
	defer c.data.mu.Unlock()
	_, ok := c.data.inputs[name]
	return ok
}
