package watch

import (
	"slices"
	"testing"
)

func TestTopologyRecomputesOnlyReaders(t *testing.T) {
	topo := newTopology()
	if got := topo.setNode("node-a", "zone-1", true); got != nil {
		t.Fatalf("first sight of a node recomputes %v, want nothing", got)
	}
	topo.setNode("node-b", "zone-2", true)
	topo.setReads("ns/local", []string{"node-a", "node-b"})
	topo.setReads("ns/same-node", []string{"node-a"})

	for _, step := range []struct {
		what       string
		node, zone string
		exists     bool
		recomputed []string
	}{
		{"label update without zone change", "node-a", "zone-1", true, nil},
		{"zone change", "node-a", "zone-3", true, []string{"ns/local", "ns/same-node"}},
		{"zone change of a node one service reads", "node-b", "zone-1", true, []string{"ns/local"}},
		{"a node no service reads", "node-c", "zone-1", true, nil},
		{"removal", "node-b", "", false, []string{"ns/local"}},
		{"removal of an unknown node", "node-x", "", false, nil},
		{"a node reappears without a zone", "node-b", "", true, nil},
		{"it gets a zone", "node-b", "zone-2", true, []string{"ns/local"}},
	} {
		if got := topo.setNode(step.node, step.zone, step.exists); !slices.Equal(got, step.recomputed) {
			t.Errorf("%s: recomputes %v, want %v", step.what, got, step.recomputed)
		}
	}
	if z := topo.model().Zones["node-a"]; z != "zone-3" {
		t.Errorf("node-a in zone %q, want zone-3", z)
	}

	// Reads are replaced on each computation.
	topo.setReads("ns/local", []string{"node-b"})
	topo.setReads("ns/same-node", nil)
	if got := topo.setNode("node-a", "zone-1", true); got != nil {
		t.Errorf("node-a is read by nobody any more, yet recomputes %v", got)
	}
	if got := topo.setNode("node-b", "zone-3", true); !slices.Equal(got, []string{"ns/local"}) {
		t.Errorf("node-b recomputes %v, want ns/local", got)
	}
	if len(topo.readers) != 1 || len(topo.reads) != 1 {
		t.Errorf("stale dependencies kept: readers %v, reads %v", topo.readers, topo.reads)
	}
}
