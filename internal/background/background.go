// Package background runs a component for a test (a control plane, an
// agent, a watcher: anything with a Run(ctx) error method) and stops it
// when the test asks or ends, reporting what it returned.
package background

import (
	"context"
	"sync"
	"testing"
)

// Run calls run in a goroutine with a context derived from ctx. The
// returned stop cancels that context, waits for run to return and reports
// its error as "<what>: <error>"; it is also called when the test ends,
// and calling it again does nothing.
func Run(ctx context.Context, t testing.TB, what string, run func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
	t.Cleanup(stop)
	return stop
}
