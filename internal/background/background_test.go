package background

import (
	"context"
	"testing"
)

func TestStopWaitsOnce(t *testing.T) {
	runs := 0
	stop := Run(context.Background(), t, "component", func(ctx context.Context) error {
		runs++
		<-ctx.Done()
		return nil
	})
	stop()
	stop()
	if runs != 1 {
		t.Fatalf("run called %d times", runs)
	}
}
