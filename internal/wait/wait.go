// Package wait polls a condition in tests until it holds or time runs out:
// the one way Spoke's tests wait for something that happens on its own
// (a stream that reconnects, a datapath that converges, a file that is
// reloaded).
package wait

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Interval is how often a condition is polled.
const Interval = 20 * time.Millisecond

// Until calls cond every Interval until it returns nil, for at most d
// (until ctx is done when d is 0), and returns its last error: nil once
// the condition holds.
func Until(ctx context.Context, d time.Duration, cond func() error) error {
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-t.C:
		}
	}
}

// For fails the test unless cond returns nil within d, naming what it
// waited for and cond's last error.
func For(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	if err := Until(context.Background(), d, cond); err != nil {
		t.Fatalf("timed out waiting until %s: %v", what, err)
	}
}

// ForTrue fails the test unless cond returns true within d.
func ForTrue(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := Until(context.Background(), d, func() error {
		if !cond() {
			return errNotYet
		}
		return nil
	}); err != nil {
		t.Fatalf("timed out waiting until %s", what)
	}
}

var errNotYet = errors.New("not yet")
