package watch

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// harness runs a debouncer on a fake clock and steps the clock only while
// the debouncer waits.
type harness struct {
	t     *testing.T
	clock *clocktesting.FakeClock
	d     *debouncer
	idle  chan struct{}
	runs  chan struct{}
}

func newHarness(t *testing.T) *harness {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	h := &harness{t: t, clock: clocktesting.NewFakeClock(time.Unix(0, 0)), idle: make(chan struct{}), runs: make(chan struct{}, 100)}
	h.d = newDebouncer(100*time.Millisecond, time.Second, h.clock)
	h.d.idle = func() {
		select {
		case h.idle <- struct{}{}:
		case <-ctx.Done():
		}
	}
	go h.d.Run(ctx, func() { h.runs <- struct{}{} })
	h.waitIdle()
	return h
}

func (h *harness) waitIdle() {
	h.t.Helper()
	select {
	case <-h.idle:
	case <-time.After(5 * time.Second):
		h.t.Fatal("debouncer never waited")
	}
}

func (h *harness) trigger() {
	h.d.Trigger()
	h.waitIdle()
}

// step advances the clock; a timer that fires makes the debouncer wait
// again, which the caller says by expecting it.
func (h *harness) step(d time.Duration, wakes bool) {
	h.clock.Step(d)
	if wakes {
		h.waitIdle()
	}
}

// burst triggers n times, 50ms apart: never quiet long enough to end the
// burst.
func (h *harness) burst(n int) {
	h.trigger()
	for range n - 1 {
		h.step(50*time.Millisecond, false)
		h.trigger()
	}
}

func (h *harness) runCount() int { return len(h.runs) }

func TestDebounceBatchesABurst(t *testing.T) {
	h := newHarness(t)
	h.burst(6)
	if h.runCount() != 0 {
		t.Fatal("ran during the burst")
	}
	h.step(100*time.Millisecond, true) // 100ms of quiet ends it
	if h.runCount() != 1 {
		t.Fatalf("%d runs after the burst, want 1", h.runCount())
	}
}

func TestDebounceMaxDelayBoundsAnEndlessBurst(t *testing.T) {
	h := newHarness(t)
	h.burst(20) // 950ms of a burst that never pauses
	if h.runCount() != 0 {
		t.Fatal("ran before the maximum delay")
	}
	h.step(50*time.Millisecond, true) // 1s after the first trigger
	if h.runCount() != 1 {
		t.Fatalf("%d runs at the maximum delay, want 1", h.runCount())
	}
}

// A trigger that comes while a run is under way starts the maximum delay
// then: a run that took the whole delay is followed at once by the next,
// not a maximum delay after it returned.
func TestDebounceMaxDelayCountsFromTheTrigger(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	clock := clocktesting.NewFakeClock(time.Unix(0, 0))
	d := newDebouncer(100*time.Millisecond, time.Second, clock)
	running, release, runs := make(chan struct{}), make(chan struct{}), make(chan struct{}, 10)
	first := true
	go d.Run(ctx, func() {
		if first {
			first = false
			close(running)
			<-release
		}
		runs <- struct{}{}
	})
	d.Trigger()
	for !clock.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	clock.Step(100 * time.Millisecond) // the first burst ends
	select {
	case <-running:
	case <-ctx.Done():
		t.Fatal("no first run")
	}
	d.Trigger()             // a change while the first run is under way,
	clock.Step(time.Second) // which takes the whole maximum delay
	close(release)
	<-runs
	select {
	case <-runs:
	case <-time.After(2 * time.Second):
		t.Fatal("the change that came during a run waited for another maximum delay after it")
	}
}
