package dataset

import "fmt"

// WriteRaw writes bytes as they are (a blob output), atomically like every
// other artifact.
func (w *Writer) WriteRaw(name string, data []byte) (Artifact, error) {
	p, err := w.create(name)
	if err != nil {
		return Artifact{}, err
	}
	if _, err := p.f.Write(data); err != nil {
		p.abort()
		return Artifact{}, fmt.Errorf("dataset: %s: %w", w.display(name), err)
	}
	return p.commit("raw")
}
