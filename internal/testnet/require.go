package testnet

import (
	"os"
	"testing"
)

// Strict reports whether missing privileges or kernel features must fail
// tests instead of skipping them: under CI (CI=1) or SPOKE_PRIVILEGED=1.
func Strict() bool {
	return os.Getenv("CI") != "" && os.Getenv("CI") != "0" || os.Getenv("SPOKE_PRIVILEGED") == "1"
}

// Require stops a test that lacks something it needs: a failure under
// Strict, a skip naming what is missing otherwise.
func Require(t testing.TB, ok bool, missing string) {
	t.Helper()
	if ok {
		return
	}
	if Strict() {
		t.Fatalf("missing %s (this run requires privileged tests)", missing)
	}
	t.Skipf("skipping: missing %s", missing)
}

// RequireRoot stops a test not run as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "root (run as root, or set neither CI nor SPOKE_PRIVILEGED to skip)")
}
