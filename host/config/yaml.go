package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

var yamlLine = regexp.MustCompile(`line (\d+)`)

// parseYAML builds a node tree from YAML (one document; anchors and aliases
// resolved).
func parseYAML(file string, data []byte) (*Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		p := Pos{File: file}
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			p.Line, _ = strconv.Atoi(m[1])
			p.Col = 1
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = yamlLine.ReplaceAllString(msg, "")
		msg = strings.TrimLeft(strings.TrimPrefix(strings.TrimSpace(msg), ":"), " ")
		return nil, &Error{Pos: p, Msg: "YAML syntax: " + msg}
	}
	if doc.Kind == 0 {
		return &Node{Kind: Map, Pos: Pos{File: file, Line: 1, Col: 1}}, nil
	}
	return yamlNode(file, &doc, 0)
}

func yamlNode(file string, n *yaml.Node, depth int) (*Node, error) {
	p := Pos{File: file, Line: n.Line, Col: n.Column}
	if depth > 100 {
		return nil, &Error{Pos: p, Msg: "nesting too deep"}
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return &Node{Kind: Map, Pos: p}, nil
		}
		return yamlNode(file, n.Content[0], depth+1)
	case yaml.AliasNode:
		return yamlNode(file, n.Alias, depth+1)
	case yaml.MappingNode:
		m := &Node{Kind: Map, Pos: p}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return nil, &Error{Pos: Pos{File: file, Line: k.Line, Col: k.Column}, Msg: "keys must be plain strings"}
			}
			child, err := yamlNode(file, v, depth+1)
			if err != nil {
				return nil, err
			}
			if err := m.set(k.Value, Pos{File: file, Line: k.Line, Col: k.Column}, child); err != nil {
				return nil, err
			}
		}
		return m, nil
	case yaml.SequenceNode:
		l := &Node{Kind: List, Pos: p}
		for _, c := range n.Content {
			child, err := yamlNode(file, c, depth+1)
			if err != nil {
				return nil, err
			}
			l.Items = append(l.Items, child)
		}
		return l, nil
	case yaml.ScalarNode:
		v, err := yamlScalar(n)
		if err != nil {
			return nil, &Error{Pos: p, Msg: err.Error()}
		}
		return &Node{Kind: Scalar, Pos: p, Value: v}, nil
	}
	return nil, &Error{Pos: p, Msg: "unsupported YAML node"}
}

func yamlScalar(n *yaml.Node) (any, error) {
	switch n.ShortTag() {
	case "!!str":
		return n.Value, nil
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err != nil {
			return nil, err
		}
		return b, nil
	case "!!int":
		var i int64
		if err := n.Decode(&i); err != nil {
			return nil, fmt.Errorf("integer %s does not fit in 64 bits", n.Value)
		}
		return i, nil
	case "!!float":
		switch strings.ToLower(strings.TrimLeft(n.Value, "+")) {
		case ".inf":
			return math.Inf(1), nil
		case "-.inf":
			return math.Inf(-1), nil
		case ".nan":
			return math.NaN(), nil
		}
		var f float64
		if err := n.Decode(&f); err != nil {
			return nil, err
		}
		return f, nil
	case "!!null":
		return nil, nil
	}
	return nil, fmt.Errorf("unsupported YAML type %s", n.ShortTag())
}
