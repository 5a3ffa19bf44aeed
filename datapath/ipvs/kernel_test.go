package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/conformance"
	"github.com/spoke-proxy/spoke/datapath/conformance/kernel"
	"github.com/spoke-proxy/spoke/internal/netns"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// newDatapath opens an IPVS datapath on a lab's node and removes it when
// the test ends. This machine's kernel has no IPVS and cannot load it: the
// kernel tests run in the qemu guest of hack/vm (make test-vm), where they
// must pass; elsewhere they skip, saying so.
func newDatapath(t *testing.T, lab *testnet.Lab) *Datapath {
	t.Helper()
	opts := Options{NetNS: lab.NodeNS().Path()}
	d, err := New(opts)
	if errors.Is(err, ErrNoIPVS) && os.Getenv("SPOKE_VM") == "" {
		t.Skipf("%v: make test-vm runs this on Debian's kernel", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		if err := Cleanup(opts); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return d
}

// Reset implements kernel.Datapath.
func (d *Datapath) Reset(ctx context.Context) error {
	if err := kernel.Empty(ctx, d); err != nil {
		return err
	}
	// Cases reuse client addresses and ports: forget their connections.
	h, err := netns.Handle(d.opts.NetNS, unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return fmt.Errorf("flushing conntrack: %w", err)
	}
	return nil
}

func TestConformance(t *testing.T) {
	lab := testnet.NewForTest(t, testnet.Options{Timeout: 3 * time.Second})
	d := newDatapath(t, lab)
	kernel.Run(t, lab, d, kernel.Options{KnownGap: knownGap})
}

// knownGap lists where the IPVS datapath does not do what the table wants,
// and what it does instead.
func knownGap(q kernel.GapQuery) *conformance.Gap {
	p := q.Packet
	if svc, served, _ := frontend(q.Case, p.Packet); p.Want == datapath.Pass && svc != nil && !served {
		return &conformance.Gap{Got: datapath.Refuse, Why: "kube-proxy's IPVS mode does the same: service addresses are the node's own " +
			"(IPVS serves only local addresses), and a new connection to a port no service has on them is rejected, " +
			"so that the node's own sockets are not reachable through them (kubernetes#72236); " +
			"passing it on would take the addresses off the node"}
	}
	return nil
}

// frontend finds the service of a case with an address at the packet's
// destination, whether one of its ports serves the packet, and whether the
// address is an external one (node port, external or load-balancer IP).
func frontend(c *conformance.Case, pkt datapath.Packet) (svc *corev1.Service, served, external bool) {
	dst := pkt.Dst.Addr().String()
	proto := map[datapath.Protocol]corev1.Protocol{datapath.TCP: corev1.ProtocolTCP, datapath.UDP: corev1.ProtocolUDP, datapath.SCTP: corev1.ProtocolSCTP}[pkt.Protocol]
	var node []string
	for _, n := range c.Nodes {
		if n.Name == c.Node {
			for _, a := range n.Status.Addresses {
				node = append(node, a.Address)
			}
		}
	}
	for _, s := range c.Services {
		var ext []string
		ext = append(ext, s.Spec.ExternalIPs...)
		for _, in := range s.Status.LoadBalancer.Ingress {
			ext = append(ext, in.IP)
		}
		isCluster := slices.Contains(s.Spec.ClusterIPs, dst)
		isExt := slices.Contains(ext, dst)
		for _, sp := range s.Spec.Ports {
			if sp.Protocol != proto {
				continue
			}
			if (isCluster || isExt) && uint16(sp.Port) == pkt.Dst.Port() {
				return s, true, isExt
			}
			if sp.NodePort != 0 && uint16(sp.NodePort) == pkt.Dst.Port() && slices.Contains(node, dst) {
				return s, true, true
			}
		}
		if isCluster || isExt {
			return s, false, isExt
		}
	}
	return nil, false, false
}

// TestReadBackAndRepair programs a service, reads it back from the kernel,
// damages it behind the datapath's back, and checks that the read-back
// notices and that Apply repairs it.
func TestReadBackAndRepair(t *testing.T) {
	ctx, lab, d := nodeLab(t)
	svc := &datapath.Service{Key: "default/web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80, NodePort: 30080,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{
				{Addr: netip.MustParseAddrPort("10.244.1.5:8080")}, {Addr: netip.MustParseAddrPort("10.244.1.6:8080"), Draining: true}}}}}}
	kernel.ApplyAndReadBack(ctx, t, d, svc)
	// Someone deletes a real server.
	h, err := ipvs.New(lab.NodeNS().Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vs := plan(svc, []netip.Addr{a("192.168.0.1")})
	if err := h.DelDestination(toService(&vs[0]), toDestination(vs[0].dests[0])); err != nil {
		t.Fatal(err)
	}
	got, err := d.Programmed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got[svc.Key]; ok {
		t.Fatal("the read-back did not notice a deleted real server")
	}
	// Apply repairs it.
	kernel.ApplyAndReadBack(ctx, t, d, svc)
	// A second service may not take the first one's node port.
	clash := *svc
	clash.Key, clash.ClusterIPs = "default/other", []netip.Addr{netip.MustParseAddr("10.96.0.11")}
	if err := d.Apply(ctx, []*datapath.Service{&clash}, nil); !errors.Is(err, datapath.ErrInvalid) {
		t.Errorf("a second service on the same node port: %v, want ErrInvalid", err)
	}
}
