package server

import (
	"testing"

	"github.com/spoke-proxy/spoke/controlplane/store"
)

// TestSentPartsAreNotKept sends a two-part delta and checks that the
// session's queue no longer refers to either part: a session must not hold
// its first delta (every resource of a node's view) for its lifetime.
func TestSentPartsAreNotKept(t *testing.T) {
	s := New(Options{Store: store.New()})
	out := make(chan [][]byte, 2)
	ss := &session{s: s, c: newConn("node-1", func(error) {}), outgoing: out, queue: []part{
		{resources: []*store.Encoded{{Name: "ns/a"}}},
		{resources: []*store.Encoded{{Name: "ns/b"}}},
	}}
	backing := ss.queue
	ss.sendNext()
	ss.sendNext()
	if len(out) != 2 {
		t.Fatalf("%d responses sent, want 2", len(out))
	}
	for i, p := range backing {
		if p.resources != nil {
			t.Errorf("part %d is still referenced by the session after it was sent", i)
		}
	}
	if ss.queue != nil {
		t.Errorf("the empty queue keeps its array: %d of capacity", cap(ss.queue))
	}
}
