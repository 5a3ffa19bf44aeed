package background

import (
	"context"
	"testing"
	"time"
)

// Every calls tick with i = 0, 1, 2, ... once every d in a goroutine,
// the first call d after Every returns. The returned stop ends the calls
// and waits for one under way to return; it is also called when the test
// ends, and calling it again does nothing.
func Every(ctx context.Context, t testing.TB, d time.Duration, tick func(ctx context.Context, i int)) (stop func()) {
	t.Helper()
	return Run(ctx, t, "ticking", func(ctx context.Context) error {
		ticker := time.NewTicker(d)
		defer ticker.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return nil
			case <-ticker.C:
			}
			tick(ctx, i)
		}
	})
}
