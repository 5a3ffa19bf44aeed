package background

import (
	"context"
	"slices"
	"testing"
	"time"
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

func TestEveryCountsUntilStopped(t *testing.T) {
	var got []int
	ticked := make(chan struct{}, 1)
	stop := Every(context.Background(), t, time.Millisecond, func(ctx context.Context, i int) {
		got = append(got, i)
		if i == 2 {
			ticked <- struct{}{}
		}
	})
	<-ticked
	stop()
	n := len(got)
	time.Sleep(10 * time.Millisecond)
	if len(got) != n || n < 3 || !slices.Equal(got[:3], []int{0, 1, 2}) {
		t.Fatalf("ticks %v, %d of them before stop", got, n)
	}
}
