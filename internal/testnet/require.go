package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/internal/cgroup"
	"github.com/spoke-proxy/spoke/internal/netns"
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

// Cgroup makes an empty cgroup v2 folder for a test and removes it when the
// test ends.
func Cgroup(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	root, err := cgroup.Root()
	Require(t, err == nil, "a cgroup v2 mount")
	var b [4]byte
	rand.Read(b[:])
	dir := filepath.Join(root, "spoke-test-"+hex.EncodeToString(b[:]))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing cgroup %s: %v", dir, err)
		}
	})
	return dir
}

// NetNS makes an empty network namespace (loopback only, up) for a test and
// removes it when the test ends.
func NetNS(t testing.TB) *netns.NS {
	t.Helper()
	RequireRoot(t)
	var b [4]byte
	rand.Read(b[:])
	ns, err := netns.New("spktest-" + hex.EncodeToString(b[:]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netns.Handle(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatal(err)
	}
	return ns
}
