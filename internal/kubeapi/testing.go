package kubeapi

import (
	"context"
	"testing"
	"time"
)

const (
	// buildTimeout bounds ForTest's build; a cold build of kube-apiserver on
	// two cores takes about five minutes.
	buildTimeout = 20 * time.Minute
	// testStartTimeout bounds ForTest's start.
	testStartTimeout = 2 * time.Minute
)

// ForTest builds the binaries (or takes them from the cache), starts a server
// with its data in t.TempDir() and stops it when the test ends. A failure to
// build or start fails the test: it is never skipped. If the test fails, the
// end of both logs is added to its output.
func ForTest(t testing.TB) *Server {
	t.Helper()

	buildCtx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	bins, err := Build(buildCtx)
	if err != nil {
		t.Fatalf("building kube-apiserver and etcd: %v", err)
	}

	startCtx, cancel := context.WithTimeout(t.Context(), testStartTimeout)
	defer cancel()
	s, err := Start(startCtx, Options{Binaries: bins, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("starting kube-apiserver: %v", err)
	}
	// Registered after t.TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		if t.Failed() {
			etcdLog, apiserverLog := s.LogPaths()
			t.Logf("--- last lines of %s ---\n%s", etcdLog, logTail(etcdLog, 20))
			t.Logf("--- last lines of %s ---\n%s", apiserverLog, logTail(apiserverLog, 40))
		}
		s.Stop()
	})
	return s
}
