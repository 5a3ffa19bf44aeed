package ebpf

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/conformance/kernel"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// TestSmoke programs one service, reads it back unchanged, and reaches its
// backend through every frontend from the node and from outside.
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lab := testnet.NewForTest(t, testnet.Options{})
	d := newDatapath(t, labOptions(t, lab))
	node := []netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00::1")}
	if err := lab.SetNodeAddrs(node); err != nil {
		t.Fatal(err)
	}
	if err := d.SetNode(ctx, datapath.Node{Name: "n", Addresses: node}); err != nil {
		t.Fatal(err)
	}
	be := netip.MustParseAddrPort("10.244.1.5:8080")
	if err := lab.AddBackend(be, datapath.TCP, false); err != nil {
		t.Fatal(err)
	}
	svc := &datapath.Service{
		Key:        "default/web",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80, NodePort: 30080,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{{Addr: be}}}}},
	}
	kernel.ApplyAndReadBack(ctx, t, d, svc)
	for _, c := range []struct {
		origin datapath.Origin
		dst    string
	}{
		{datapath.FromNode, "10.96.0.10:80"},
		{datapath.FromOutside, "192.168.0.1:30080"},
		{datapath.FromOutside, "10.96.0.10:80"},
		{datapath.FromNode, "192.168.0.1:30080"},
	} {
		dst := netip.MustParseAddrPort(c.dst)
		res, err := lab.Send(ctx, c.origin, datapath.Packet{Protocol: datapath.TCP, Src: netip.MustParseAddrPort("10.0.0.99:40000"), Dst: dst})
		if err != nil {
			t.Fatalf("%s -> %s: %v", c.origin, dst, err)
		}
		if res.Outcome != testnet.Reached || res.Local != be || res.Remote != dst {
			t.Errorf("%s -> %s: %s, want the backend %s, seen by the client as %s", c.origin, dst, res, be, dst)
		}
	}
}

// TestUnusedBackendsAreDeleted checks that a backend no slot names any more
// leaves the backends map: after an endpoint change, and, for entries left
// behind by an earlier agent, after the next Apply of a reopened datapath.
func TestUnusedBackendsAreDeleted(t *testing.T) {
	ctx, d := labDatapath(t)
	svc := func(eps ...string) *datapath.Service {
		s := &datapath.Service{Key: "default/web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80, Internal: datapath.Backends{NoEndpoints: datapath.Reject}}}}
		for _, ep := range eps {
			s.Ports[0].Internal.Endpoints = append(s.Ports[0].Internal.Endpoints, datapath.Endpoint{Addr: netip.MustParseAddrPort(ep)})
		}
		return s
	}
	backends := func(d *Datapath) []string {
		t.Helper()
		m, err := readAll[uint32, lbBackend](d.objs.Backends)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, b := range m {
			out = append(out, netip.AddrPortFrom(fromAddr(b.Addr), fromPort(b.Port)).String())
		}
		slices.Sort(out)
		return out
	}
	if err := d.Apply(ctx, []*datapath.Service{svc("10.244.1.5:8080", "10.244.1.6:8080")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(ctx, []*datapath.Service{svc("10.244.1.6:8080", "10.244.1.7:8080")}, nil); err != nil {
		t.Fatal(err)
	}
	if got, want := backends(d), []string{"10.244.1.6:8080", "10.244.1.7:8080"}; !slices.Equal(got, want) {
		t.Errorf("after an endpoint change: backends %v, want %v", got, want)
	}
	// An entry nothing names, as a crashed agent could leave.
	if err := d.objs.Backends.Put(uint32(999), lbBackend{Addr: toAddr(netip.MustParseAddr("10.244.9.9")), Port: toPort(80), Family: 4}); err != nil {
		t.Fatal(err)
	}
	d2 := reopen(t, d)
	if err := d2.Apply(ctx, []*datapath.Service{svc("10.244.1.7:8080")}, nil); err != nil {
		t.Fatal(err)
	}
	if got, want := backends(d2), []string{"10.244.1.7:8080"}; !slices.Equal(got, want) {
		t.Errorf("after reopening: backends %v, want %v", got, want)
	}
}
