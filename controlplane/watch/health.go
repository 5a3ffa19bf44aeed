package watch

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/client-go/tools/cache"
)

// health follows one informer's watch: a watch error starts a stall, and
// the next sign of progress (the informer's resource version moving, after
// its relist or a new event) ends it.
type health struct {
	name string
	inf  cache.SharedIndexInformer

	mu           sync.Mutex
	failingSince time.Time
	failedAtRV   string
	lastErr      error
}

func newHealth(name string, inf cache.SharedIndexInformer) (*health, error) {
	h := &health{name: name, inf: inf}
	if err := inf.SetWatchErrorHandlerWithContext(h.watchFailed); err != nil {
		return nil, fmt.Errorf("watching %s health: %w", name, err)
	}
	return h, nil
}

// watchFailed is the informer's watch error handler; it logs as the
// default one does.
func (h *health) watchFailed(ctx context.Context, r *cache.Reflector, err error) {
	cache.DefaultWatchErrorHandler(ctx, r, err)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failingSince.IsZero() {
		h.failingSince = time.Now()
		h.failedAtRV = h.inf.LastSyncResourceVersion()
	}
	h.lastErr = err
}

// stalled returns an error when the watch has been failing, with no
// progress, for longer than bound.
func (h *health) stalled(now time.Time, bound time.Duration) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failingSince.IsZero() {
		return nil
	}
	if h.inf.LastSyncResourceVersion() != h.failedAtRV {
		h.failingSince, h.lastErr = time.Time{}, nil
		return nil
	}
	if d := now.Sub(h.failingSince); d > bound {
		return fmt.Errorf("%s watch failing for %s (bound %s): %w", h.name, d.Round(time.Second), bound, h.lastErr)
	}
	return nil
}
