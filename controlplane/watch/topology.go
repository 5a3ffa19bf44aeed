package watch

import (
	"maps"
	"slices"

	"github.com/spoke-proxy/spoke/controlplane/model"
)

// topology tracks the zone of every node and which services' views read
// which node's zone, so that a node change recomputes only the services
// that depend on it: those with a view of their own for that node (Local
// traffic policies, PreferSameNode hints). A service whose views differ
// only by zone depends on no node: nodes move between its zone views in
// the store without any recomputation.
//
// A topology is used by one goroutine at a time.
type topology struct {
	zones map[string]string
	// readers maps a node to the services that read its zone; reads maps
	// a service to those nodes.
	readers map[string]map[string]struct{}
	reads   map[string][]string
}

func newTopology() *topology {
	return &topology{
		zones:   map[string]string{},
		readers: map[string]map[string]struct{}{},
		reads:   map[string][]string{},
	}
}

// model returns the topology as the view computation reads it. The map is
// shared: it is valid until the next setNode.
func (t *topology) model() model.Topology { return model.Topology{Zones: t.zones} }

// setNode records a node's zone, or its removal when exists is false, and
// returns the services to recompute because the zone they read changed. A
// node that is unknown reads as zone "", so adding or removing a node
// without a zone changes nothing.
func (t *topology) setNode(name, zone string, exists bool) []string {
	old := t.zones[name]
	if exists {
		t.zones[name] = zone
	} else {
		delete(t.zones, name)
		zone = ""
	}
	if old == zone {
		return nil
	}
	return slices.Sorted(maps.Keys(t.readers[name]))
}

// setReads records the nodes whose zone a service's views read (the keys of
// its Views.ByNode), replacing what it read before.
func (t *topology) setReads(service string, nodes []string) {
	for _, n := range t.reads[service] {
		if r := t.readers[n]; r != nil {
			delete(r, service)
			if len(r) == 0 {
				delete(t.readers, n)
			}
		}
	}
	if len(nodes) == 0 {
		delete(t.reads, service)
		return
	}
	t.reads[service] = nodes
	for _, n := range nodes {
		r := t.readers[n]
		if r == nil {
			r = map[string]struct{}{}
			t.readers[n] = r
		}
		r[service] = struct{}{}
	}
}
