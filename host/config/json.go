package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// parseJSON builds a node tree from JSON with positions, using the
// decoder's token stream (encoding/json alone reports only offsets).
func parseJSON(file string, data []byte) (*Node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	lines := newLineIndex(data)
	at := func(off int64) Pos {
		// InputOffset is the end of the previous token; skip the separators
		// so the position points at the token itself.
		for off < int64(len(data)) && strings.IndexByte(" \t\r\n:,", data[off]) >= 0 {
			off++
		}
		l, c := lines.at(int(off))
		return Pos{File: file, Line: l, Col: c}
	}
	wrap := func(err error) error {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			l, c := lineCol(data, int(se.Offset))
			return &Error{Pos: Pos{File: file, Line: l, Col: c}, Msg: "JSON syntax: " + se.Error()}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			l, c := lineCol(data, len(data))
			return &Error{Pos: Pos{File: file, Line: l, Col: c}, Msg: "JSON syntax: unexpected end of input"}
		}
		return &Error{Pos: Pos{File: file}, Msg: "JSON: " + err.Error()}
	}
	var value func() (*Node, error)
	value = func() (*Node, error) {
		p := at(dec.InputOffset())
		tok, err := dec.Token()
		if err != nil {
			return nil, wrap(err)
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				m := &Node{Kind: Map, Pos: p}
				for dec.More() {
					kp := at(dec.InputOffset())
					kt, err := dec.Token()
					if err != nil {
						return nil, wrap(err)
					}
					v, err := value()
					if err != nil {
						return nil, err
					}
					if err := m.set(kt.(string), kp, v); err != nil {
						return nil, err
					}
				}
				if _, err := dec.Token(); err != nil {
					return nil, wrap(err)
				}
				return m, nil
			case '[':
				l := &Node{Kind: List, Pos: p}
				for dec.More() {
					v, err := value()
					if err != nil {
						return nil, err
					}
					l.Items = append(l.Items, v)
				}
				if _, err := dec.Token(); err != nil {
					return nil, wrap(err)
				}
				return l, nil
			}
		case json.Number:
			if i, err := t.Int64(); err == nil && !strings.ContainsAny(t.String(), ".eE") {
				return &Node{Kind: Scalar, Pos: p, Value: i}, nil
			}
			f, err := t.Float64()
			if err != nil {
				return nil, &Error{Pos: p, Msg: fmt.Sprintf("number %s out of range", t)}
			}
			return &Node{Kind: Scalar, Pos: p, Value: f}, nil
		case string, bool, nil:
			return &Node{Kind: Scalar, Pos: p, Value: t}, nil
		}
		return nil, &Error{Pos: p, Msg: fmt.Sprintf("unexpected JSON token %v", tok)}
	}
	root, err := value()
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &Error{Pos: at(dec.InputOffset()), Msg: "JSON syntax: data after the top-level value"}
	}
	return root, nil
}
