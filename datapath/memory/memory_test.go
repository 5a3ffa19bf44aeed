package memory_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/memory"
)

// fakeClock is a settable clock for session affinity.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) Advance(d time.Duration) { c.now = c.now.Add(d) }

func affinityService(timeout time.Duration, backends ...string) *datapath.Service {
	s := &datapath.Service{
		Key:             "default/web",
		ClusterIPs:      []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		AffinityTimeout: timeout,
		Ports: []datapath.Port{{
			Name: "http", Protocol: datapath.TCP, Port: 80,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject},
		}},
	}
	for _, b := range backends {
		s.Ports[0].Internal.Endpoints = append(s.Ports[0].Internal.Endpoints, datapath.Endpoint{Addr: netip.MustParseAddrPort(b)})
	}
	return s
}

func connection(srcPort uint16) datapath.Packet {
	return datapath.Packet{
		Protocol: datapath.TCP,
		Src:      netip.AddrPortFrom(netip.MustParseAddr("10.244.1.100"), srcPort),
		Dst:      netip.MustParseAddrPort("10.96.0.10:80"),
	}
}

func TestAffinityExpiresAfterIdleTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	backends := []string{"10.244.1.5:8080", "10.244.2.5:8080", "10.244.3.5:8080"}

	// A datapath without affinity tells which backend a connection's hash
	// picks on its own.
	plain := memory.New(memory.Options{})
	if err := plain.Apply(ctx, []*datapath.Service{affinityService(0, backends...)}, nil); err != nil {
		t.Fatal(err)
	}
	first := plain.Trace(datapath.FromNode, connection(40000)).Backend
	other := uint16(0)
	for p := uint16(40001); p < 41000; p++ {
		if plain.Trace(datapath.FromNode, connection(p)).Backend != first {
			other = p
			break
		}
	}
	if other == 0 {
		t.Fatal("every source port hashes to one backend")
	}
	alone := plain.Trace(datapath.FromNode, connection(other)).Backend

	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := memory.New(memory.Options{Now: clock.Now})
	if err := d.Apply(ctx, []*datapath.Service{affinityService(10*time.Second, backends...)}, nil); err != nil {
		t.Fatal(err)
	}
	if got := d.Trace(datapath.FromNode, connection(40000)).Backend; got != first {
		t.Fatalf("first connection reached %s, want %s", got, first)
	}
	// Within the timeout, and refreshed by each connection, the client
	// stays on its backend.
	for range 3 {
		clock.Advance(9 * time.Second)
		if got := d.Trace(datapath.FromNode, connection(other)).Backend; got != first {
			t.Fatalf("connection within the affinity timeout reached %s, want %s", got, first)
		}
	}
	// Once idle for longer than the timeout, a connection is balanced anew.
	clock.Advance(11 * time.Second)
	if got := d.Trace(datapath.FromNode, connection(other)).Backend; got != alone {
		t.Fatalf("connection after the affinity timeout reached %s, want %s", got, alone)
	}
}

func TestAffinityForgetsRemovedBackend(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := memory.New(memory.Options{Now: clock.Now})
	if err := d.Apply(ctx, []*datapath.Service{affinityService(time.Hour, "10.244.1.5:8080", "10.244.2.5:8080")}, nil); err != nil {
		t.Fatal(err)
	}
	first := d.Trace(datapath.FromNode, connection(40000)).Backend
	remaining := "10.244.1.5:8080"
	if first.String() == remaining {
		remaining = "10.244.2.5:8080"
	}
	if err := d.Apply(ctx, []*datapath.Service{affinityService(time.Hour, remaining)}, nil); err != nil {
		t.Fatal(err)
	}
	if got := d.Trace(datapath.FromNode, connection(40000)).Backend; got.String() != remaining {
		t.Fatalf("after its backend went away the client reached %s, want %s", got, remaining)
	}
}

func TestOriginSelectsBackends(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := memory.New(memory.Options{})
	if err := d.SetNode(ctx, datapath.Node{Name: "node-a", Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.1")}}); err != nil {
		t.Fatal(err)
	}
	s := affinityService(0, "10.244.2.5:8080")
	s.Ports[0].NodePort = 30080
	s.Ports[0].External = &datapath.Backends{NoEndpoints: datapath.Drop}
	if err := d.Apply(ctx, []*datapath.Service{s}, nil); err != nil {
		t.Fatal(err)
	}
	pkt := datapath.Packet{Protocol: datapath.TCP, Src: netip.MustParseAddrPort("203.0.113.50:40000"), Dst: netip.MustParseAddrPort("192.168.0.1:30080")}
	if v := d.Trace(datapath.FromOutside, pkt); v.Action != datapath.Discard {
		t.Errorf("from outside: %s, want drop", v)
	}
	// Unset ExternalFromNode means the same as Internal.
	if v := d.Trace(datapath.FromNode, pkt); v.Action != datapath.Forward || v.Backend.String() != "10.244.2.5:8080" {
		t.Errorf("from the node: %s, want forward to 10.244.2.5:8080", v)
	}
}
