package config

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// parseTOML builds a node tree from TOML, keeping tables, dotted keys,
// arrays of tables and inline tables in source order.
func parseTOML(file string, data []byte) (*Node, error) {
	p := &unstable.Parser{}
	p.Reset(data)
	lines := newLineIndex(data)
	pos := func(r unstable.Range) Pos {
		l, c := lines.at(int(r.Offset))
		return Pos{File: file, Line: l, Col: c}
	}
	root := &Node{Kind: Map, Pos: Pos{File: file, Line: 1, Col: 1}}
	current := root
	// Tables opened by a [header] may be reopened by dotted keys, but not
	// declared twice; remember which headers we have seen.
	declared := map[string]Pos{}
	for p.NextExpression() {
		expr := p.Expression()
		switch expr.Kind {
		case unstable.Comment:
			continue
		case unstable.Table, unstable.ArrayTable:
			keys, keyPos := tomlKey(expr.Key(), pos)
			at := pos(expr.Raw)
			if len(keyPos) > 0 {
				at = keyPos[0]
			}
			name := strings.Join(keys, ".")
			parent, err := walkTables(root, keys[:len(keys)-1], keyPos, file)
			if err != nil {
				return nil, err
			}
			last := keys[len(keys)-1]
			lastPos := keyPos[len(keyPos)-1]
			if expr.Kind == unstable.Table {
				if first, ok := declared[name]; ok {
					return nil, &Error{Pos: at, Key: name, Msg: fmt.Sprintf("table declared twice (first at line %d)", first.Line)}
				}
				declared[name] = at
				if f := parent.Get(last); f != nil {
					if f.Value.Kind != Map {
						return nil, &Error{Pos: at, Key: name, Msg: "already set to a " + f.Value.TypeName()}
					}
					current = f.Value
				} else {
					current = &Node{Kind: Map, Pos: at}
					_ = parent.set(last, lastPos, current)
				}
			} else {
				f := parent.Get(last)
				if f == nil {
					list := &Node{Kind: List, Pos: at}
					_ = parent.set(last, lastPos, list)
					f = parent.Get(last)
				}
				if f.Value.Kind != List {
					return nil, &Error{Pos: at, Key: name, Msg: "already set to a " + f.Value.TypeName()}
				}
				current = &Node{Kind: Map, Pos: at}
				f.Value.Items = append(f.Value.Items, current)
			}
		case unstable.KeyValue:
			if err := tomlKeyValue(current, expr, pos, file); err != nil {
				return nil, err
			}
		}
	}
	if err := p.Error(); err != nil {
		var perr *unstable.ParserError
		if errors.As(err, &perr) && len(perr.Highlight) > 0 {
			return nil, &Error{Pos: pos(p.Range(perr.Highlight)), Msg: "TOML syntax: " + perr.Message}
		}
		return nil, &Error{Pos: Pos{File: file}, Msg: "TOML syntax: " + err.Error()}
	}
	return root, nil
}

func tomlKey(it unstable.Iterator, pos func(unstable.Range) Pos) ([]string, []Pos) {
	var keys []string
	var at []Pos
	for it.Next() {
		k := it.Node()
		keys = append(keys, string(k.Data))
		at = append(at, pos(k.Raw))
	}
	return keys, at
}

// walkTables descends (creating as needed) through dotted key parts.
func walkTables(n *Node, keys []string, keyPos []Pos, file string) (*Node, error) {
	for i, k := range keys {
		f := n.Get(k)
		if f == nil {
			child := &Node{Kind: Map, Pos: keyPos[i]}
			_ = n.set(k, keyPos[i], child)
			n = child
			continue
		}
		switch f.Value.Kind {
		case Map:
			n = f.Value
		case List:
			// A dotted path through an array of tables means its last element.
			if len(f.Value.Items) == 0 || f.Value.Items[len(f.Value.Items)-1].Kind != Map {
				return nil, &Error{Pos: keyPos[i], Key: strings.Join(keys[:i+1], "."), Msg: "is a list, not a table"}
			}
			n = f.Value.Items[len(f.Value.Items)-1]
		default:
			return nil, &Error{Pos: keyPos[i], Key: strings.Join(keys[:i+1], "."), Msg: "already set to a " + f.Value.TypeName()}
		}
	}
	return n, nil
}

func tomlKeyValue(table *Node, kv *unstable.Node, pos func(unstable.Range) Pos, file string) error {
	keys, keyPos := tomlKey(kv.Key(), pos)
	parent, err := walkTables(table, keys[:len(keys)-1], keyPos, file)
	if err != nil {
		return err
	}
	v, err := tomlValue(kv.Value(), pos, file)
	if err != nil {
		return err
	}
	return parent.set(keys[len(keys)-1], keyPos[len(keyPos)-1], v)
}

func tomlValue(n *unstable.Node, pos func(unstable.Range) Pos, file string) (*Node, error) {
	at := pos(n.Raw)
	switch n.Kind {
	case unstable.String:
		return &Node{Kind: Scalar, Pos: at, Value: string(n.Data)}, nil
	case unstable.Bool:
		return &Node{Kind: Scalar, Pos: at, Value: string(n.Data) == "true"}, nil
	case unstable.Integer:
		s := strings.ReplaceAll(string(n.Data), "_", "")
		i, err := strconv.ParseInt(s, 0, 64)
		if err != nil {
			return nil, &Error{Pos: at, Msg: fmt.Sprintf("integer %s does not fit in 64 bits", n.Data)}
		}
		return &Node{Kind: Scalar, Pos: at, Value: i}, nil
	case unstable.Float:
		s := strings.ReplaceAll(string(n.Data), "_", "")
		var f float64
		switch strings.TrimLeft(s, "+-") {
		case "inf":
			f = math.Inf(1)
			if strings.HasPrefix(s, "-") {
				f = math.Inf(-1)
			}
		case "nan":
			f = math.NaN()
		default:
			var err error
			if f, err = strconv.ParseFloat(s, 64); err != nil {
				return nil, &Error{Pos: at, Msg: fmt.Sprintf("bad float %s", n.Data)}
			}
		}
		return &Node{Kind: Scalar, Pos: at, Value: f}, nil
	case unstable.Array:
		list := &Node{Kind: List, Pos: at}
		it := n.Children()
		for it.Next() {
			c, err := tomlValue(it.Node(), pos, file)
			if err != nil {
				return nil, err
			}
			list.Items = append(list.Items, c)
		}
		return list, nil
	case unstable.InlineTable:
		m := &Node{Kind: Map, Pos: at}
		it := n.Children()
		for it.Next() {
			if err := tomlKeyValue(m, it.Node(), pos, file); err != nil {
				return nil, err
			}
		}
		return m, nil
	default:
		return nil, &Error{Pos: at, Msg: fmt.Sprintf("%s values are not supported in pipeline configs", n.Kind)}
	}
}

// lineIndex maps byte offsets to 1-based lines and columns in O(log n), so
// positioning every node of a large config stays linear overall.
type lineIndex []int

func newLineIndex(data []byte) lineIndex {
	starts := lineIndex{0}
	for i, c := range data {
		if c == '\n' {
			starts = append(starts, i+1)
		}
	}
	return starts
}

func (li lineIndex) at(off int) (int, int) {
	i := sort.Search(len(li), func(i int) bool { return li[i] > off }) - 1
	return i + 1, off - li[i] + 1
}

// lineCol converts a byte offset into a 1-based line and column.
func lineCol(data []byte, off int) (int, int) {
	if off > len(data) {
		off = len(data)
	}
	return newLineIndex(data[:off]).at(off)
}
