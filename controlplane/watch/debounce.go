package watch

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// debouncer batches bursts of triggers: it fires once the triggers have
// been quiet for window, and no later than maxDelay after the first one, as
// kube-proxy's minimum sync period and Istio's debounce do.
type debouncer struct {
	window, maxDelay time.Duration
	clock            clock.Clock
	trigger          chan struct{}
	// idle, when set, is called each time Run is about to wait: tests use
	// it to step a fake clock only once the timers are set.
	idle func()
}

func newDebouncer(window, maxDelay time.Duration, c clock.Clock) *debouncer {
	return &debouncer{window: window, maxDelay: maxDelay, clock: c, trigger: make(chan struct{}, 1)}
}

// Trigger asks for a run. It never blocks.
func (d *debouncer) Trigger() {
	select {
	case d.trigger <- struct{}{}:
	default:
	}
}

// Run calls fn after each burst of triggers until ctx is done.
func (d *debouncer) Run(ctx context.Context, fn func()) {
	for {
		d.waiting()
		select {
		case <-ctx.Done():
			return
		case <-d.trigger:
		}
		first := d.clock.Now()
		quiet := d.clock.NewTimer(d.window)
	burst:
		for {
			deadline := d.maxDelay - d.clock.Since(first)
			if deadline <= 0 {
				break
			}
			limit := d.clock.NewTimer(deadline)
			d.waiting()
			select {
			case <-ctx.Done():
				quiet.Stop()
				limit.Stop()
				return
			case <-quiet.C():
				limit.Stop()
				break burst
			case <-limit.C():
				quiet.Stop()
				break burst
			case <-d.trigger:
				limit.Stop()
				quiet.Stop()
				quiet = d.clock.NewTimer(d.window)
			}
		}
		fn()
	}
}

func (d *debouncer) waiting() {
	if d.idle != nil {
		d.idle()
	}
}
