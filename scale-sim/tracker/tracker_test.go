package tracker

import (
	"testing"
	"time"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
	"github.com/spoke-proxy/spoke/scale-sim/cluster"
)

// newTracker is a tracker of 3 nodes in one zone and one service whose
// nodes all hold version "a".
func newTracker(t *testing.T) (*Tracker, *cluster.Cluster) {
	t.Helper()
	c := cluster.New(cluster.Spec{Nodes: 3, Zones: 1, Services: 1, EndpointsPerService: 1, Seed: 1})
	c.SetViews(0, &cluster.Versions{Default: "a"})
	tr := New(c)
	for n := range c.Nodes {
		tr.Applied(n, time.Now(), []*spokev1.Resource{{Name: cluster.Namespace + "/" + cluster.ServiceName(0), Version: "a"}}, nil)
	}
	if ok, total := tr.Converged(); ok != total {
		t.Fatalf("%d/%d pairs hold the view before any change", ok, total)
	}
	return tr, c
}

// change makes service 0 go from its current views to v, as the simulator
// does, and returns the change.
func change(tr *Tracker, c *cluster.Cluster, v string) *Change {
	next := &cluster.Versions{Default: v}
	ch := tr.NewChange(0, c.Views(0), next)
	c.SetViews(0, next)
	ch.Sent(time.Now())
	return ch
}

func TestAppliedVersionEndsItsChanges(t *testing.T) {
	tr, c := newTracker(t)
	change(tr, c, "b")
	change(tr, c, "c")
	if got, want := tr.Pending(), 6; got != want {
		t.Fatalf("%d pending, want %d (2 changes on 3 nodes)", got, want)
	}
	// Node 0 gets the coalesced result: both changes are applied at once.
	tr.Applied(0, time.Now(), []*spokev1.Resource{{Name: cluster.Namespace + "/" + cluster.ServiceName(0), Version: "c"}}, nil)
	if got, want := tr.Pending(), 4; got != want {
		t.Errorf("%d pending after node 0 applied c, want %d", got, want)
	}
	h := tr.Phase(0).Histogram
	if got := h.Count(); got != 2 {
		t.Errorf("%d latencies recorded, want 2", got)
	}
	if ok, _ := tr.Converged(); ok != 1 {
		t.Errorf("%d pairs hold the view, want 1 (node 0)", ok)
	}
}

// A service that changes and changes back before the control plane's
// debounce fires sends nothing: the nodes already hold the result.
func TestChangeBackEndsPendingChanges(t *testing.T) {
	tr, c := newTracker(t)
	change(tr, c, "b")
	change(tr, c, "a")
	if got := tr.Pending(); got != 0 {
		t.Errorf("%d pending after a change and its reversal, want 0", got)
	}
	if ok, total := tr.Converged(); ok != total {
		t.Errorf("%d/%d pairs hold the view after a change and its reversal", ok, total)
	}
	// A node that did receive the intermediate version is back to
	// pending-free once it holds the final one again.
	tr.Applied(1, time.Now(), []*spokev1.Resource{{Name: cluster.Namespace + "/" + cluster.ServiceName(0), Version: "b"}}, nil)
	if ok, total := tr.Converged(); ok != total-1 {
		t.Errorf("%d/%d pairs hold the view while node 1 holds b", ok, total)
	}
	tr.Applied(1, time.Now(), []*spokev1.Resource{{Name: cluster.Namespace + "/" + cluster.ServiceName(0), Version: "a"}}, nil)
	if ok, total := tr.Converged(); ok != total {
		t.Errorf("%d/%d pairs hold the view after node 1 is back on a", ok, total)
	}
}

// A node may apply a change's version before the change is sent: the
// version is one the control plane was already sending it (a service
// that goes b, c, then b again while the first b is in flight). That is
// no latency: it is not recorded as one from the zero time.
func TestVersionAppliedBeforeItsChangeIsSent(t *testing.T) {
	tr, c := newTracker(t)
	change(tr, c, "b")
	change(tr, c, "c")
	next := &cluster.Versions{Default: "b"}
	tr.NewChange(0, c.Views(0), next) // not sent yet
	c.SetViews(0, next)
	tr.Applied(0, time.Now(), []*spokev1.Resource{{Name: cluster.Namespace + "/" + cluster.ServiceName(0), Version: "b"}}, nil)
	h := tr.Phase(0).Histogram
	if got := h.Count(); got != 2 {
		t.Errorf("%d latencies recorded, want 2 (the two sent changes)", got)
	}
}
