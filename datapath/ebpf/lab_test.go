package ebpf

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"

	"github.com/spoke-proxy/spoke/internal/testnet"
)

// labOptions returns datapath options for a lab: its cgroup, its node's
// namespace, external devices (towards the outside, and the default
// route's, which the node's own packets to service addresses leave by, as
// on a real node), pod devices (the pod's and the local backends', which
// are pods too), and pins of the test's own.
func labOptions(t testing.TB, lab *testnet.Lab) Options {
	return Options{
		PinPath:    testPinPath(),
		CgroupPath: lab.CgroupPath(),
		NetNS:      lab.NodeNS().Path(),
		Devices:    []string{testnet.ExternalDevice, testnet.WorldDevice},
		PodDevices: []string{testnet.PodDevice, testnet.BackendDevices},
		OnError:    func(err error) { t.Errorf("ebpf datapath: %v", err) },
	}
}

// testPinPath returns a pin folder of the caller's own.
func testPinPath() string {
	var b [4]byte
	rand.Read(b[:])
	return "/sys/fs/bpf/spoke-test-" + hex.EncodeToString(b[:])
}

// labDatapath opens a datapath on a lab of its own, with a context that
// ends with the test or after a minute.
func labDatapath(t *testing.T) (context.Context, *Datapath) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx, newDatapath(t, labOptions(t, testnet.NewForTest(t, testnet.Options{})))
}

// reopen closes d and opens its pins again, as a restarted agent does; the
// new datapath is closed when the test ends.
func reopen(t *testing.T, d *Datapath) *Datapath {
	t.Helper()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := New(d.opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Close() })
	return d2
}

// newDatapath opens a datapath and removes it, pins and all, when the test
// ends.
func newDatapath(t testing.TB, opts Options) *Datapath {
	t.Helper()
	testnet.RequireRoot(t)
	testnet.Require(t, features.HaveProgramType(ebpf.CGroupSockAddr) == nil, "BPF_PROG_TYPE_CGROUP_SOCK_ADDR")
	d, err := New(opts)
	if err != nil {
		t.Fatalf("opening the datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("closing: %v", err)
		}
		if err := Cleanup(opts); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return d
}
