// Package ebpftest gives a test's agent the eBPF datapath on the node of a
// testnet lab, pinned under a path of its own and removed when the test
// ends.
package ebpftest

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	spokeebpf "github.com/spoke-proxy/spoke/datapath/ebpf"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// AgentDatapath returns eBPF options on a fresh pin path for an agent on
// the lab's node (its cgroup, its network namespace and the device to the
// outside), and the agent flags that say the same. The pinned objects are
// removed when the test ends.
func AgentDatapath(t testing.TB, lab *testnet.Lab) (spokeebpf.Options, []string) {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	opts := spokeebpf.Options{
		PinPath:    "/sys/fs/bpf/spoke-test-" + hex.EncodeToString(b[:]),
		CgroupPath: lab.CgroupPath(),
		NetNS:      lab.NodeNS().Path(),
		Devices:    []string{testnet.ExternalDevice},
	}
	t.Cleanup(func() {
		if err := spokeebpf.Cleanup(opts); err != nil {
			t.Errorf("removing the eBPF datapath: %v", err)
		}
	})
	return opts, []string{"-datapath", "ebpf", "-bpf-pin-path", opts.PinPath, "-cgroup-root", opts.CgroupPath,
		"-devices", testnet.ExternalDevice, "-devices-netns", opts.NetNS}
}
