package ebpf

import (
	"net/netip"
	"testing"

	"github.com/spoke-proxy/spoke/datapath"
)

// TestPlanWithoutKernel plans and diffs a service against an empty state:
// pure functions, no maps, no root.
func TestPlanWithoutKernel(t *testing.T) {
	st := newState(&dump{})
	eps := []datapath.Endpoint{
		{Addr: netip.MustParseAddrPort("10.244.1.5:8080")},
		{Addr: netip.MustParseAddrPort("10.244.2.5:8080")},
	}
	svc := &datapath.Service{
		Key:        "default/web",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:      []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80, Internal: datapath.Backends{Endpoints: eps, NoEndpoints: datapath.Reject}}},
	}
	updates, p, err := planUpdates(st, []*datapath.Service{svc, svc}, []string{"default/web", "default/gone"})
	if err != nil {
		t.Fatal(err)
	}
	if len(updates) != 1 || updates[0].remove || updates[0].key != svc.Key {
		t.Fatalf("updates: got %+v, want one upsert of %s (the last upsert wins over a remove; an unknown remove is nothing)", updates, svc.Key)
	}
	c, refs := diff(st, updates, p)
	if got := len(c.backends.put); got != len(eps) || c.backends.grow != len(eps) {
		t.Errorf("backends: %d written, growing by %d; want %d", got, c.backends.grow, len(eps))
	}
	if len(c.meta.put) != 1 || len(c.addrs.put) != 1 || len(c.ports.put) != 1 {
		t.Errorf("meta, addresses, ports written: %d, %d, %d; want 1 each", len(c.meta.put), len(c.addrs.put), len(c.ports.put))
	}
	k := lbSvcKey{Addr: toAddr(svc.ClusterIPs[0]), Port: toPort(80), Proto: protoTCP, Scope: scopeAddr}
	if _, ok := c.frontends.put[k]; !ok {
		t.Errorf("no frontend for %s:80 among %v", svc.ClusterIPs[0], c.frontends.put)
	}
	for id, n := range refs {
		if _, ok := c.backends.put[id]; !ok || n <= 0 {
			t.Errorf("backend %d: %d slots name it, written %v", id, n, ok)
		}
	}
	if len(c.backends.del)+len(c.meta.del)+len(c.frontends.del) != 0 {
		t.Errorf("an empty state has nothing to delete: %v %v %v", c.backends.del, c.meta.del, c.frontends.del)
	}
}
