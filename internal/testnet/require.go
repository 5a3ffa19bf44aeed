package testnet

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
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

// HaveSCTP reports whether the kernel has SCTP sockets.
func HaveSCTP() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}
