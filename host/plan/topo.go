package plan

import "github.com/pipehost/pipehost/host/config"

// topoSort orders nodes with Kahn's algorithm in O(stages + edges), taking
// ready stages in config order so the order is deterministic. On a cycle it
// returns one cycle's stage names instead.
func topoSort(stages []*config.Stage, byName map[string]*Node) ([]*Node, []string) {
	indeg := make(map[*Node]int, len(stages))
	for _, s := range stages {
		n := byName[s.Name]
		indeg[n] = len(n.Inputs)
	}
	// A FIFO of ready nodes, seeded in config order.
	queue := make([]*Node, 0, len(stages))
	for _, s := range stages {
		if n := byName[s.Name]; indeg[n] == 0 {
			queue = append(queue, n)
		}
	}
	order := make([]*Node, 0, len(stages))
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		order = append(order, n)
		for _, e := range n.Consumers {
			indeg[e.To]--
			if indeg[e.To] == 0 {
				queue = append(queue, e.To)
			}
		}
	}
	if len(order) == len(stages) {
		return order, nil
	}
	return nil, findCycle(stages, byName, indeg)
}

// findCycle walks producer edges among the stages Kahn could not order; each
// of them has an unordered producer, so the walk must revisit a stage.
func findCycle(stages []*config.Stage, byName map[string]*Node, indeg map[*Node]int) []string {
	var start *Node
	for _, s := range stages {
		if n := byName[s.Name]; indeg[n] > 0 {
			start = n
			break
		}
	}
	seen := map[*Node]int{}
	var path []*Node
	for n := start; ; {
		if i, ok := seen[n]; ok {
			cycle := path[i:]
			// Report in data-flow order (producer before consumer), starting
			// at the stage declared first, so the message is stable.
			names := make([]string, len(cycle))
			first := 0
			for j := range cycle {
				k := len(cycle) - 1 - j
				names[k] = cycle[j].Name
				if cycle[j].Config.Pos.Line < cycle[len(cycle)-1-first].Config.Pos.Line {
					first = j
				}
			}
			k := len(cycle) - 1 - first
			return append(names[k:], names[:k]...)
		}
		seen[n] = len(path)
		path = append(path, n)
		for _, e := range n.Inputs {
			if indeg[e.From] > 0 {
				n = e.From
				break
			}
		}
	}
}
