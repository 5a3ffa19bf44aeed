package wait

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	calls := 0
	if err := Until(context.Background(), time.Second, func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || calls != 3 {
		t.Fatalf("Until = %v after %d calls, want nil after 3", err, calls)
	}
	last := errors.New("never")
	if err := Until(context.Background(), 3*Interval, func() error { return last }); !errors.Is(err, last) {
		t.Fatalf("Until = %v, want the condition's last error", err)
	}
}
