package watch

import (
	"context"
	"sync/atomic"
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
	// pending is when the first trigger not yet covered by a run came, in
	// Unix nanoseconds; 0 when none. A trigger that comes while fn runs
	// starts the next burst's maxDelay then, not once fn returns.
	pending atomic.Int64
	// idle, when set, is called each time Run is about to wait: tests use
	// it to step a fake clock only once the timers are set.
	idle func()
}

func newDebouncer(window, maxDelay time.Duration, c clock.Clock) *debouncer {
	return &debouncer{window: window, maxDelay: maxDelay, clock: c, trigger: make(chan struct{}, 1)}
}

// Trigger asks for a run. It never blocks.
func (d *debouncer) Trigger() {
	d.pending.CompareAndSwap(0, d.clock.Now().UnixNano())
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
		if p := d.pending.Load(); p != 0 {
			first = time.Unix(0, p)
		}
		quiet := d.clock.NewTimer(d.window)
	burst:
		for {
			deadline := d.maxDelay - d.clock.Since(first)
			if deadline <= 0 {
				quiet.Stop()
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
		d.pending.Store(0)
		fn()
	}
}

func (d *debouncer) waiting() {
	if d.idle != nil {
		d.idle()
	}
}
