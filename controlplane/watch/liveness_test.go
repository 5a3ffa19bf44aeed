package watch

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiwatch "k8s.io/apimachinery/pkg/watch"
	testclock "k8s.io/utils/clock/testing"
)

// A kind is stalled once nothing was heard on its watch for longer than
// the bound; any event, a bookmark included, counts as heard.
func TestStalledFollowsWhatEachWatchHears(t *testing.T) {
	clock := testclock.NewFakeClock(time.Unix(1000, 0))
	h := newHearing(clock)
	src := apiwatch.NewFake()
	w := newHeardWatch(src, func() { h.heard(kindEndpointSlices) })
	defer w.Stop()

	clock.Step(2 * time.Minute)
	if s := h.stalled(3 * time.Minute); len(s) != 0 {
		t.Fatalf("stalled after 2 minutes with a 3-minute bound: %v", s)
	}
	// A bookmark on the EndpointSlice watch, then 2 more minutes: only
	// the other kinds have heard nothing for 4 minutes.
	go src.Action(apiwatch.Bookmark, &corev1.Node{})
	if ev := <-w.ResultChan(); ev.Type != apiwatch.Bookmark {
		t.Fatalf("passed on %v, want the bookmark", ev.Type)
	}
	clock.Step(2 * time.Minute)
	s := h.stalled(3 * time.Minute)
	if len(s) != 2 || s[0].Kind != "services" || s[1].Kind != "nodes" || s[0].Silent != 4*time.Minute {
		t.Fatalf("stalled: %v, want services and nodes silent for 4m", s)
	}
	h.heard(kindServices)
	h.heard(kindNodes)
	if s := h.stalled(3 * time.Minute); len(s) != 0 {
		t.Fatalf("stalled after every kind was heard: %v", s)
	}
}

// Stopping a watch whose reader went away ends its goroutine: the source
// is drained until it closes.
func TestHeardWatchStopsWithoutAReader(t *testing.T) {
	src := apiwatch.NewFakeWithChanSize(1, false)
	heard := make(chan struct{}, 1)
	w := newHeardWatch(src, func() { heard <- struct{}{} })
	src.Add(&corev1.Node{}) // taken, and never read
	<-heard
	w.Stop()
	select {
	case _, ok := <-w.ResultChan():
		for ok {
			_, ok = <-w.ResultChan()
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not end after Stop")
	}
}
