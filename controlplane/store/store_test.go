package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/spoke-proxy/spoke/controlplane/model"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

func view(name string, endpoints ...string) *spokev1.Service {
	s := &spokev1.Service{Namespace: "ns", Name: name, ClusterIps: []string{"10.96.0.1"}}
	p := &spokev1.ServicePort{Port: 80, Protocol: spokev1.Protocol_PROTOCOL_TCP, Internal: &spokev1.Backends{}}
	for _, ep := range endpoints {
		p.Internal.Endpoints = append(p.Internal.Endpoints, &spokev1.Endpoint{Ip: ep, Port: 80})
	}
	s.Ports = []*spokev1.ServicePort{p}
	return s
}

func apply(t *testing.T, s *Store, b Batch) uint64 {
	t.Helper()
	rev, err := s.Apply(b)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func nodes(zones map[string]string) Batch {
	b := Batch{Nodes: map[string]*spokev1.Node{}}
	for n, z := range zones {
		b.Nodes[n] = &spokev1.Node{Name: n, Zone: z, Addresses: []string{"192.168.0.1"}}
	}
	return b
}

func deltaNames(d Delta) string {
	var out []string
	for _, r := range d.Resources {
		out = append(out, r.Name+"@"+r.Version[:4])
	}
	return fmt.Sprint(out, " removed ", d.Removed)
}

func TestSinceFollowsGroups(t *testing.T) {
	s := New()
	apply(t, s, nodes(map[string]string{"a1": "a", "a2": "a", "b1": "b"}))
	base := apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/web": {Default: view("web", "10.0.0.1", "10.0.0.2")},
	}})
	// A zone-specific view for zone a reaches a1 and a2, not b1.
	rev := apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/web": {Default: view("web", "10.0.0.1", "10.0.0.2"), ByZone: map[string]*spokev1.Service{"a": view("web", "10.0.0.1")}},
	}})
	for node, want := range map[string]int{"a1": 1, "a2": 1, "b1": 0} {
		if d := s.Since(node, base, nil); len(d.Resources) != want || d.Rev != rev {
			t.Errorf("%s after a zone-a change: %d resources at rev %d, want %d at %d", node, len(d.Resources), d.Rev, want, rev)
		}
	}
	// A node-specific view reaches that node only; dropping it sends the
	// node back to its zone view.
	rev2 := apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/web": {Default: view("web", "10.0.0.1", "10.0.0.2"), ByZone: map[string]*spokev1.Service{"a": view("web", "10.0.0.1")},
			ByNode: map[string]*spokev1.Service{"a2": view("web", "10.0.0.2")}},
	}})
	for node, want := range map[string]int{"a1": 0, "a2": 1, "b1": 0} {
		if d := s.Since(node, rev, nil); len(d.Resources) != want {
			t.Errorf("%s after a node-a2 change: %d resources, want %d", node, len(d.Resources), want)
		}
	}
	apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/web": {Default: view("web", "10.0.0.1", "10.0.0.2"), ByZone: map[string]*spokev1.Service{"a": view("web", "10.0.0.1")}},
	}})
	d := s.Since("a2", rev2, nil)
	if len(d.Resources) != 1 || d.Resources[0] != s.services["ns/web"].byZone["a"] {
		t.Errorf("a2 after losing its own view: %s, want the zone-a view", deltaNames(d))
	}
	if d := s.Since("a1", rev2, nil); !d.Empty() {
		t.Errorf("a1 is not concerned by a2's view: %s", deltaNames(d))
	}
}

func TestViewsEqualToDefaultShareIt(t *testing.T) {
	s := New()
	apply(t, s, nodes(map[string]string{"a1": "a"}))
	apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/web": {Default: view("web", "10.0.0.1"), ByZone: map[string]*spokev1.Service{"a": view("web", "10.0.0.1")},
			ByNode: map[string]*spokev1.Service{"a1": view("web", "10.0.0.1")}},
	}})
	e := s.services["ns/web"]
	if len(e.byZone) != 0 || len(e.byNode) != 0 {
		t.Fatalf("views equal to the default were kept as groups: %d zone, %d node", len(e.byZone), len(e.byNode))
	}
}

func TestDeletedServiceIsRemovedAndCollected(t *testing.T) {
	s := New()
	sub := s.Subscribe(0)
	defer s.Unsubscribe(sub)
	var rev uint64
	for i := range 1100 {
		rev = apply(t, s, Batch{Services: map[string]*model.Views{fmt.Sprintf("ns/s%d", i): {Default: view("x")}}})
	}
	del := Batch{Services: map[string]*model.Views{}}
	for i := range 1100 {
		del.Services[fmt.Sprintf("ns/s%d", i)] = nil
	}
	apply(t, s, del)
	if d := s.Since("n", rev, nil); len(d.Removed) != 1100 {
		t.Fatalf("%d removals after deleting 1100 services", len(d.Removed))
	}
	if s.tombstones != 1100 {
		t.Fatalf("tombstones collected while a subscriber still needs them: %d left", s.tombstones)
	}
	sub.SetSynced(s.Revision())
	apply(t, s, Batch{Services: map[string]*model.Views{"ns/other": {Default: view("other")}}})
	if s.tombstones != 0 || len(s.services) != 1 || s.log.Len() != 1 {
		t.Fatalf("after every subscriber synced: %d tombstones, %d services, log %d", s.tombstones, len(s.services), s.log.Len())
	}
}

// TestZoneChangeSendsWhatDiffers: after one zone change, or the node
// becoming known (an agent may connect before its node is watched), only
// the services whose view differs between the zones are sent, with the
// node; after two changes, everything.
func TestZoneChangeSendsWhatDiffers(t *testing.T) {
	s := New()
	rev := apply(t, s, Batch{Services: map[string]*model.Views{
		"ns/x":    {Default: view("x")},
		"ns/y":    {Default: view("y")},
		"ns/hint": {Default: view("hint", "10.0.0.1", "10.0.0.2"), ByZone: map[string]*spokev1.Service{"b": view("hint", "10.0.0.2")}},
	}})
	apply(t, s, nodes(map[string]string{"n": "a"}))
	if d := s.Since("n", rev, nil); deltaNames(d) != deltaNames(Delta{Resources: []*Encoded{s.nodes["n"].enc}}) {
		t.Errorf("after the node became known: %s, want only the node", deltaNames(d))
	}
	known := s.Revision()
	apply(t, s, nodes(map[string]string{"n": "b"}))
	d := s.Since("n", known, nil)
	if len(d.Resources) != 2 || d.Resources[0].Name != spokev1.NodeResourceName || d.Resources[1] != s.services["ns/hint"].byZone["b"] {
		t.Errorf("after a zone change: %s, want the node and the zone-b view of hint", deltaNames(d))
	}
	if d := s.Since("n", rev, nil); len(d.Resources) != 4 {
		t.Errorf("after two zone changes: %s, want the node and every service", deltaNames(d))
	}
}

func TestAPIRevisionsOnlyMoveForward(t *testing.T) {
	s := New()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.APIRevisions() != nil {
		t.Fatal("a new store claims API revisions")
	}
	done := make(chan error, 1)
	go func() {
		done <- s.WaitAPIRevisions(ctx, &spokev1.ApiRevisions{Services: 10, EndpointSlices: 20})
	}()
	apply := func(r *spokev1.ApiRevisions) {
		t.Helper()
		if _, err := s.Apply(Batch{APIRevisions: r}); err != nil {
			t.Fatal(err)
		}
	}
	apply(&spokev1.ApiRevisions{Services: 12, EndpointSlices: 15, Nodes: 4})
	select {
	case err := <-done:
		t.Fatalf("waiter returned before endpoint slices reached 20: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	// An older batch (from a slower watch) moves nothing back.
	apply(&spokev1.ApiRevisions{Services: 3, EndpointSlices: 21})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := s.APIRevisions(); got.GetServices() != 12 || got.GetEndpointSlices() != 21 || got.GetNodes() != 4 {
		t.Errorf("revisions %v, want the highest of each kind", got)
	}
	d := s.Initial("node-1", nil)
	if !proto.Equal(d.APIRevisions, s.APIRevisions()) {
		t.Errorf("delta revisions %v, store %v", d.APIRevisions, s.APIRevisions())
	}
	var resp spokev1.StreamViewsResponse
	if err := proto.Unmarshal(d.APIRevisionsField, &resp); err != nil || !proto.Equal(resp.GetApiRevisions(), s.APIRevisions()) {
		t.Errorf("delta's encoded field decodes to %v (%v), want %v", resp.GetApiRevisions(), err, s.APIRevisions())
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := s.WaitAPIRevisions(short, &spokev1.ApiRevisions{Nodes: 5}); err == nil {
		t.Error("waiting for a revision the store never reached succeeded")
	}
}
