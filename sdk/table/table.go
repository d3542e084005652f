// Package table moves Arrow tables between stages: Write puts record
// batches into a table output as an Arrow IPC file in shared memory, Read
// maps a table input and reads it without copying.
package table

import (
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"

	"github.com/pipehost/pipehost/sdk"
)

// Write writes recs (all of schema) to the table output name.
func Write(c *sdk.Context, name string, schema *arrow.Schema, recs ...arrow.RecordBatch) error {
	w, err := c.OutputWriter(name)
	if err != nil {
		return err
	}
	fw, err := ipc.NewFileWriter(w, ipc.WithSchema(schema))
	if err != nil {
		return fmt.Errorf("table output %q: %w", name, err)
	}
	for _, r := range recs {
		if err := fw.Write(r); err != nil {
			return fmt.Errorf("table output %q: %w", name, err)
		}
	}
	if err := fw.Close(); err != nil {
		return fmt.Errorf("table output %q: %w", name, err)
	}
	return nil
}

// Read opens the table input name zero-copy: the reader's buffers point into
// the read-only shared mapping, valid until the run function returns.
func Read(c *sdk.Context, name string) (*ipc.FileReader, error) {
	b, h, err := c.InputBytes(name)
	if err != nil {
		return nil, err
	}
	if h.Format != sdk.ArrowIPC {
		return nil, fmt.Errorf("input %q is not an Arrow IPC table (format %s)", name, h.Format)
	}
	r, err := ipc.NewMappedFileReader(b)
	if err != nil {
		return nil, fmt.Errorf("input %q: %w", name, err)
	}
	return r, nil
}
