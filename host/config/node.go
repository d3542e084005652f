// Package config loads a pipeline config from TOML, JSON or YAML into one
// schema. Each format is first parsed into a tree of positioned nodes, so
// every error, whatever the format, names the file, line and key.
package config

import (
	"fmt"
	"sort"
	"strings"
)

// Kind is the shape of a node.
type Kind int

const (
	Map Kind = iota + 1
	List
	Scalar
)

func (k Kind) String() string {
	switch k {
	case Map:
		return "table"
	case List:
		return "list"
	default:
		return "value"
	}
}

// Pos is where a node starts in its source file.
type Pos struct {
	File      string
	Line, Col int
}

func (p Pos) String() string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// Field is one key of a map node, in source order.
type Field struct {
	Key    string
	KeyPos Pos
	Value  *Node
}

// Node is a parsed config value with its position. Scalars hold bool,
// int64, float64 or string.
type Node struct {
	Kind   Kind
	Pos    Pos
	Fields []Field
	Items  []*Node
	Value  any
	// index speeds up Get on large tables (a pipeline of thousands of stages).
	index map[string]int
}

// Get returns the field named key, or nil.
func (n *Node) Get(key string) *Field {
	if n.index != nil {
		if i, ok := n.index[key]; ok {
			return &n.Fields[i]
		}
		return nil
	}
	for i := range n.Fields {
		if n.Fields[i].Key == key {
			return &n.Fields[i]
		}
	}
	return nil
}

// set adds or replaces a field; used by the format parsers.
func (n *Node) set(key string, keyPos Pos, v *Node) error {
	if f := n.Get(key); f != nil {
		return &Error{Pos: keyPos, Msg: fmt.Sprintf("duplicate key %q (first set at line %d)", key, f.KeyPos.Line)}
	}
	n.Fields = append(n.Fields, Field{Key: key, KeyPos: keyPos, Value: v})
	if n.index == nil && len(n.Fields) > 16 {
		n.index = make(map[string]int, 2*len(n.Fields))
		for i, f := range n.Fields {
			n.index[f.Key] = i
		}
	} else if n.index != nil {
		n.index[key] = len(n.Fields) - 1
	}
	return nil
}

// TypeName describes a scalar for error messages.
func (n *Node) TypeName() string {
	if n.Kind != Scalar {
		return n.Kind.String()
	}
	switch n.Value.(type) {
	case bool:
		return "boolean"
	case int64:
		return "integer"
	case float64:
		return "float"
	case string:
		return "string"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", n.Value)
}

// Error is a config error at a position, naming the key it concerns.
type Error struct {
	Pos Pos
	Key string
	Msg string
}

func (e *Error) Error() string {
	if e.Key != "" {
		return fmt.Sprintf("%s: %s: %s", e.Pos, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Pos, e.Msg)
}

// Errors collects every problem found in one pass, so a user fixes a config
// in one go instead of one error per run.
type Errors []*Error

func (es Errors) Error() string {
	sorted := append(Errors(nil), es...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].Pos.File != sorted[j].Pos.File {
			return sorted[i].Pos.File < sorted[j].Pos.File
		}
		return sorted[i].Pos.Line < sorted[j].Pos.Line
	})
	var b strings.Builder
	for i, e := range sorted {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Err returns nil for no errors, so callers can return it directly.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}
