// Package kernel runs the conformance table against a datapath that
// programs a real kernel: every case is programmed into the node of an
// internal/testnet lab, every endpoint is a responder in a namespace of its
// own, and every packet is a real connection whose answer says where it
// went.
//
// Caveats: needs what a testnet lab needs (root, cgroup v2). SCTP packets
// are skipped on a kernel without SCTP, except in the qemu guest of hack/vm
// (SPOKE_VM set), where a missing SCTP fails the run.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/conformance"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// Datapath is a datapath that programs the kernel of a lab's node.
type Datapath interface {
	datapath.Datapath
	// Reset empties the datapath between cases: no services, no node
	// addresses, no flows.
	Reset(ctx context.Context) error
}

// Empty removes every service a datapath reads back, and its node
// addresses: the part of a Reset every datapath shares.
func Empty(ctx context.Context, dp datapath.Datapath) error {
	programmed, err := dp.Programmed(ctx)
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(programmed))
	for k := range programmed {
		keys = append(keys, k)
	}
	if err := dp.Apply(ctx, nil, keys); err != nil {
		return err
	}
	return dp.SetNode(ctx, datapath.Node{})
}

// ApplyAndReadBack programs svc into dp and fails t unless dp reads it back
// unchanged.
func ApplyAndReadBack(ctx context.Context, t testing.TB, dp datapath.Datapath, svc *datapath.Service) {
	t.Helper()
	if err := dp.Apply(ctx, []*datapath.Service{svc}, nil); err != nil {
		t.Fatal(err)
	}
	got, err := dp.Programmed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !datapath.Equal(got[svc.Key], svc) {
		t.Fatalf("read back %+v, want %+v", got[svc.Key], svc)
	}
}

// Options adapt the conformance run to one datapath.
type Options struct {
	// KnownGap, when set, names what the datapath cannot do yet for a
	// packet and what it does instead (see conformance.KnownGap).
	KnownGap func(GapQuery) *conformance.Gap
	// ServiceAt, when set, names the programmed service answering at a
	// packet's destination, for messages.
	ServiceAt func(datapath.Packet) string
	// Settle, when set, is called once a case's endpoints are in place and
	// its services programmed, before its packets: a datapath that
	// follows devices as they appear (the lab gives each endpoint a
	// device of its own) waits there until it has.
	Settle func(context.Context) error
}

// GapQuery is what a KnownGap function decides on: a packet, its case, and
// which of the case's endpoint addresses are on other nodes.
type GapQuery struct {
	Case   *conformance.Case
	Packet conformance.Packet
	Remote map[netip.Addr]bool
}

// Run runs the conformance table against a kernel datapath on
// the lab's node with real packets: every endpoint is a responder in a
// namespace of its own (behind the node, or behind the outside when the
// case puts it on another node), and a trace is a real connection. It
// prints one summary line (see Report).
func Run(t *testing.T, lab *testnet.Lab, dp Datapath, opts Options) {
	cases := map[string]conformance.Case{}
	for _, c := range conformance.Cases() {
		cases[c.Name] = c
	}
	sum := conformance.Run(t, func(st *testing.T) conformance.Target {
		name := strings.TrimPrefix(st.Name(), t.Name()+"/")
		c, ok := cases[name]
		if !ok {
			st.Fatalf("no conformance case is named %q", name)
		}
		if err := lab.Reset(); err != nil {
			st.Fatal(err)
		}
		if err := dp.Reset(context.Background()); err != nil {
			st.Fatal(err)
		}
		return &target{Datapath: dp, t: st, lab: lab, c: &c, remote: remoteEndpoints(c), opts: opts}
	})
	if err := Report(dp.Name(), sum); err != nil {
		t.Error(err)
	}
}

// SummaryFileEnv names an environment variable: when it is set, Report
// also appends its line to the file it names (go test shows no output of
// passing packages; make test prints the file).
const SummaryFileEnv = "SPOKE_CONFORMANCE_SUMMARY"

// Report prints one line for a kernel conformance run,
// "conformance DATAPATH KERNEL: P passed, G known gaps, S skipped", on
// standard output and into the file named by SummaryFileEnv.
func Report(name string, sum conformance.Summary) error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return err
	}
	line := fmt.Sprintf("conformance %s %s: %s\n", name, unix.ByteSliceToString(uts.Release[:]), sum)
	fmt.Print(line)
	path := os.Getenv(SummaryFileEnv)
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(line)
	return errors.Join(err, f.Close())
}

type target struct {
	Datapath
	t      *testing.T
	lab    *testnet.Lab
	c      *conformance.Case
	remote map[netip.Addr]bool
	opts   Options
}

var _ conformance.KnownGap = (*target)(nil)

// KnownGap implements conformance.KnownGap.
func (t *target) KnownGap(p conformance.Packet) *conformance.Gap {
	if t.opts.KnownGap == nil {
		return nil
	}
	return t.opts.KnownGap(GapQuery{Case: t.c, Packet: p, Remote: t.remote})
}

// SetNode gives the lab's node the node's addresses, then programs them.
func (t *target) SetNode(ctx context.Context, node datapath.Node) error {
	if err := t.lab.SetNodeAddrs(node.Addresses); err != nil {
		return err
	}
	return t.Datapath.SetNode(ctx, node)
}

// Apply starts a responder for every endpoint, then programs the services.
func (t *target) Apply(ctx context.Context, upsert []*datapath.Service, remove []string) error {
	for _, s := range upsert {
		for _, p := range s.Ports {
			if p.Protocol == datapath.SCTP && !testnet.HaveSCTP() {
				continue
			}
			for _, b := range []*datapath.Backends{&p.Internal, p.External, p.ExternalFromNode} {
				if b == nil {
					continue
				}
				for _, ep := range b.Endpoints {
					if err := t.lab.AddBackend(ep.Addr, p.Protocol, t.remote[ep.Addr.Addr()]); err != nil {
						return err
					}
				}
			}
		}
	}
	if err := t.Datapath.Apply(ctx, upsert, remove); err != nil {
		return err
	}
	if t.opts.Settle != nil {
		return t.opts.Settle(ctx)
	}
	return nil
}

// Trace sends the packet and reads the verdict off what answered.
func (t *target) Trace(ctx context.Context, from datapath.Origin, pkt datapath.Packet) (datapath.Verdict, error) {
	if pkt.Protocol == datapath.SCTP && !testnet.HaveSCTP() {
		// Kernel modules cannot be loaded here; the Debian kernel in
		// hack/vm loads sctp and runs these packets.
		if os.Getenv("SPOKE_VM") != "" {
			return datapath.Verdict{}, fmt.Errorf("%s: this kernel has no SCTP", pkt)
		}
		t.t.Skipf("%s: this kernel has no SCTP (hack/vm/run-tests.sh runs it on a kernel that has)", pkt)
	}
	start := time.Now()
	res, err := t.lab.Send(ctx, from, pkt)
	if err != nil {
		return datapath.Verdict{}, err
	}
	t.t.Logf("%s from %s: %s (%v)", pkt, from, res, time.Since(start))
	v := datapath.Verdict{}
	if t.opts.ServiceAt != nil {
		v.Service = t.opts.ServiceAt(pkt)
	}
	switch res.Outcome {
	case testnet.Refused:
		v.Action = datapath.Refuse
	case testnet.Unreachable, testnet.TimedOut:
		v.Action = datapath.Discard
	case testnet.Reached:
		// Whatever answered, the client must see the address it asked
		// for: getpeername and UDP sources are translated back.
		if res.Remote != pkt.Dst {
			return v, fmt.Errorf("%s: the client saw %s as its peer, not %s (%s)", pkt, res.Remote, pkt.Dst, res)
		}
		if res.Local == pkt.Dst {
			v.Action = datapath.Pass
			break
		}
		v.Action, v.Backend = datapath.Forward, res.Local
		// A backend on the node sees the client itself: socket-level
		// balancing and DNAT translate only the destination. Except a
		// backend reached through its own service (hairpin): its reply
		// to itself would never leave it, so kube-proxy masquerades it.
		hairpin := res.Local.Addr() == pkt.Src.Addr()
		if (from == datapath.FromNode || !t.remote[res.Local.Addr()]) && !hairpin {
			if res.Peer.Addr() != pkt.Src.Addr() {
				return v, fmt.Errorf("%s: the backend saw %s as the source, not %s", pkt, res.Peer, pkt.Src)
			}
		}
	default:
		return v, fmt.Errorf("%s: %s", pkt, res)
	}
	return v, nil
}

// remoteEndpoints are the endpoint addresses a case puts on other nodes.
func remoteEndpoints(c conformance.Case) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, es := range c.Slices {
		for _, ep := range es.Endpoints {
			if ep.NodeName != nil && *ep.NodeName == c.Node {
				continue
			}
			for _, a := range ep.Addresses {
				if addr, err := netip.ParseAddr(a); err == nil {
					out[addr] = true
				}
			}
		}
	}
	return out
}
