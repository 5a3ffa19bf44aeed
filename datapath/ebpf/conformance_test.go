package ebpf

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/conformance"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// target runs conformance packets through a real kernel: the datapath is
// attached to a lab's node, every endpoint is a responder in a namespace of
// its own (behind the node, or behind the outside when the case puts it on
// another node), and a trace is a real connection.
type target struct {
	*Datapath
	t   *testing.T
	lab *testnet.Lab
	// remote are endpoint addresses on other nodes than the one under
	// test.
	remote map[netip.Addr]bool
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
	return t.Datapath.Apply(ctx, upsert, remove)
}

// Trace sends the packet and reads the verdict off what answered.
func (t *target) Trace(ctx context.Context, origin conformance.Origin, pkt datapath.Packet) (datapath.Verdict, error) {
	if pkt.Protocol == datapath.SCTP && !testnet.HaveSCTP() {
		// Kernel modules cannot be loaded here; the Debian kernel in
		// hack/vm loads sctp and runs these packets.
		if os.Getenv("SPOKE_VM") != "" {
			return datapath.Verdict{}, fmt.Errorf("%s: this kernel has no SCTP", pkt)
		}
		t.t.Skipf("%s: this kernel has no SCTP (hack/vm/run-tests.sh runs it on a kernel that has)", pkt)
	}
	from := testnet.FromNode
	if origin == conformance.External {
		from = testnet.FromOutside
	}
	start := time.Now()
	res, err := t.lab.Send(ctx, from, pkt)
	if err != nil {
		return datapath.Verdict{}, err
	}
	t.t.Logf("%s from %s: %s (%v)", pkt, from, res, time.Since(start))
	v := datapath.Verdict{Service: t.serviceAt(pkt)}
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
		// balancing and DNAT translate only the destination.
		if from == testnet.FromNode || !t.remote[res.Local.Addr()] {
			if res.Peer.Addr() != pkt.Src.Addr() {
				return v, fmt.Errorf("%s: the backend saw %s as the source, not %s", pkt, res.Peer, pkt.Src)
			}
		}
	default:
		return v, fmt.Errorf("%s: %s", pkt, res)
	}
	return v, nil
}

// KnownGap implements conformance.KnownGap.
func (t *target) KnownGap(origin conformance.Origin, pkt datapath.Packet) string {
	if origin == conformance.Local && pkt.Protocol == datapath.SCTP {
		return "the kernel runs no cgroup connect hook for SCTP sockets, and the datapath has no per-packet path for traffic from pods yet"
	}
	return ""
}

// serviceAt names the programmed service with a frontend at the packet's
// destination, for messages.
func (t *target) serviceAt(pkt datapath.Packet) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	proto, err := toProto(pkt.Protocol)
	if err != nil {
		return ""
	}
	k := lbSvcKey{Addr: toAddr(pkt.Dst.Addr()), Port: toPort(pkt.Dst.Port()), Proto: proto, Scope: scopeAddr}
	if id, ok := t.owners[k]; ok {
		return t.state.byID[id].key
	}
	return ""
}

// reset empties a datapath between cases: no services, no node addresses,
// no flows.
func (d *Datapath) reset(ctx context.Context) error {
	if err := d.reloadLocked(); err != nil {
		return err
	}
	d.mu.Lock()
	keys := make([]string, 0, len(d.state.services))
	for k := range d.state.services {
		keys = append(keys, k)
	}
	d.mu.Unlock()
	if err := d.Apply(ctx, nil, keys); err != nil {
		return err
	}
	if err := d.SetNode(ctx, datapath.Node{}); err != nil {
		return err
	}
	m := &d.objs.lbMaps
	if err := clearMap[lbTuple, lbCtVal](m.Conntrack); err != nil {
		return err
	}
	if err := clearMap[lbTuple, lbRevVal](m.Revnat); err != nil {
		return err
	}
	if err := clearMap[lbAffKey, lbAffVal](m.Affinity); err != nil {
		return err
	}
	return clearMap[lbSockKey, lbSockVal](m.SockRevnat)
}

// reloadLocked reads the maps back into the state.
func (d *Datapath) reloadLocked() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reload()
}

// clearMap deletes every entry of a map.
func clearMap[K comparable, V any](m *ebpf.Map) error {
	entries, err := readAll[K, V](m)
	if err != nil {
		return err
	}
	keys := make([]K, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	return deleteAll(m, keys)
}

func TestConformance(t *testing.T) {
	lab := testnet.NewForTest(t, testnet.Options{Timeout: 3 * time.Second})
	d := newDatapath(t, labOptions(t, lab))
	cases := map[string]conformance.Case{}
	for _, c := range conformance.Cases() {
		cases[c.Name] = c
	}
	conformance.Run(t, func(st *testing.T) conformance.Target {
		name := strings.TrimPrefix(st.Name(), t.Name()+"/")
		c, ok := cases[name]
		if !ok {
			st.Fatalf("no conformance case is named %q", name)
		}
		if err := lab.Reset(); err != nil {
			st.Fatal(err)
		}
		if err := d.reset(context.Background()); err != nil {
			st.Fatal(err)
		}
		return &target{Datapath: d, t: st, lab: lab, remote: remoteEndpoints(c)}
	})
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
