package chaos

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/ebpftest"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// node1 is the address of a lab's node.
var node1 = netip.MustParseAddr("192.168.0.1")

// ebpfNode is a lab (a node in network namespaces with backends behind
// it) whose agent runs the eBPF datapath, and the flows through it.
type ebpfNode struct {
	t        *testing.T
	lab      *testnet.Lab
	backends map[netip.AddrPort]bool
	args     []string // the agent's datapath flags
}

// newEBPFNode makes a lab with a backend at each address (port 8080) and
// the agent flags that program its eBPF datapath; the pinned objects are
// removed when the test ends.
func newEBPFNode(t *testing.T, backends ...string) *ebpfNode {
	t.Helper()
	testnet.RequireRoot(t)
	testnet.Require(t, features.HaveProgramType(ebpf.CGroupSockAddr) == nil, "BPF_PROG_TYPE_CGROUP_SOCK_ADDR")
	lab := testnet.NewForTest(t, testnet.Options{})
	if err := lab.SetNodeAddrs([]netip.Addr{node1}); err != nil {
		t.Fatal(err)
	}
	n := &ebpfNode{t: t, lab: lab, backends: map[netip.AddrPort]bool{}}
	for _, a := range backends {
		be := netip.AddrPortFrom(netip.MustParseAddr(a), 8080)
		n.backends[be] = true
		if err := lab.AddBackend(be, datapath.TCP, false); err != nil {
			t.Fatal(err)
		}
	}
	_, n.args = ebpftest.AgentDatapath(t, lab)
	return n
}

// fromPod is a pod's TCP connection to a cluster IP's port 80.
func fromPod(ip string) datapath.Packet {
	return datapath.Packet{Protocol: datapath.TCP, Src: netip.MustParseAddrPort("10.244.0.100:0"),
		Dst: netip.AddrPortFrom(netip.MustParseAddr(ip), 80)}
}

// reach makes a new connection and says whether it reached one of the
// node's backends.
func (n *ebpfNode) reach(ctx context.Context, pkt datapath.Packet) error {
	res, err := n.lab.Send(ctx, datapath.FromNode, pkt)
	if err != nil {
		return err
	}
	if res.Outcome != testnet.Reached || !n.backends[res.Local] || res.Remote != pkt.Dst {
		return fmt.Errorf("%s: %s", pkt, res)
	}
	return nil
}

// flows holds long-lived connections and checks that they never fail.
type flows struct {
	n     *ebpfNode
	conns []*testnet.Conn
	// checks and failures count echoes on the held connections and new
	// connections made by check.
	checks, failures int
}

// hold opens a long-lived connection.
func (f *flows) hold(ctx context.Context, pkt datapath.Packet) {
	f.n.t.Helper()
	c, res, err := f.n.lab.Open(ctx, datapath.FromNode, pkt)
	if err == nil && (res.Outcome != testnet.Reached || !f.n.backends[res.Local]) {
		err = fmt.Errorf("%s: %s", pkt, res)
	}
	if err != nil {
		f.n.t.Fatalf("opening a long-lived connection: %v", err)
	}
	f.n.t.Cleanup(func() { c.Close() })
	f.conns = append(f.conns, c)
}

// holdFromPod opens a long-lived connection from a pod to the cluster IP
// vip's port 80 and returns the flows that hold it, with the packet of a
// new connection to vip for their checks.
func (n *ebpfNode) holdFromPod(ctx context.Context, vip string) (*flows, datapath.Packet) {
	n.t.Helper()
	pkt := fromPod(vip)
	f := &flows{n: n}
	f.hold(ctx, pkt)
	return f, pkt
}

// check echoes on every held connection and makes a new connection to
// each of pkts, reporting each failure.
func (f *flows) check(ctx context.Context, when string, pkts ...datapath.Packet) {
	f.n.t.Helper()
	for _, c := range f.conns {
		f.checks++
		if err := c.Echo(ctx); err != nil {
			f.failures++
			f.n.t.Errorf("%s: a long-lived connection failed: %v", when, err)
		}
	}
	for _, p := range pkts {
		f.checks++
		if err := f.n.reach(ctx, p); err != nil {
			f.failures++
			f.n.t.Errorf("%s: a new connection failed: %v", when, err)
		}
	}
}

// checkFor runs check for d, and at least once.
func (f *flows) checkFor(ctx context.Context, d time.Duration, when string, pkts ...datapath.Packet) {
	f.n.t.Helper()
	for end := time.Now().Add(d); ; {
		f.check(ctx, when, pkts...)
		if time.Now().After(end) || f.n.t.Failed() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
