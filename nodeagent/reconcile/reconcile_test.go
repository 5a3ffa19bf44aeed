package reconcile_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/nodeagent/reconcile"
)

func service(key, ip string) *datapath.Service {
	return &datapath.Service{Key: key, ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)}, Ports: []datapath.Port{{
		Protocol: datapath.TCP, Port: 80,
		Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{{Addr: netip.MustParseAddrPort("10.244.0.1:8080")}}},
	}}}
}

func TestRejectedServicesAreIsolated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dp := memory.New(memory.Options{})
	r := reconcile.New(dp)
	bad := service("ns/bad", "10.96.0.2")
	bad.Ports[0].Port = 0
	failed, err := r.Apply(ctx, nil, []*datapath.Service{service("ns/good", "10.96.0.1"), bad}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) != 1 || !errors.Is(failed["ns/bad"], datapath.ErrInvalid) {
		t.Fatalf("failed = %v, want ns/bad invalid", failed)
	}
	if got := r.Desired(); len(got) != 1 || got[0] != "ns/good" {
		t.Fatalf("desired %v", got)
	}
	if dp.Len() != 1 {
		t.Fatalf("datapath holds %d services", dp.Len())
	}
}

func TestRepairFixesDrift(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dp := memory.New(memory.Options{})
	r := reconcile.New(dp)
	if _, err := r.Apply(ctx, nil, []*datapath.Service{service("ns/a", "10.96.0.1"), service("ns/b", "10.96.0.2")}, nil); err != nil {
		t.Fatal(err)
	}
	// Someone else removes one service, changes another and adds a third.
	if err := dp.Apply(ctx, []*datapath.Service{service("ns/b", "10.96.0.99"), service("ns/x", "10.96.0.3")}, []string{"ns/a"}); err != nil {
		t.Fatal(err)
	}
	drift, err := r.Repair(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"changed ns/b", "missing ns/a", "unexpected ns/x"}
	if len(drift) != len(want) {
		t.Fatalf("drift %v, want %v", drift, want)
	}
	for i := range want {
		if drift[i] != want[i] {
			t.Fatalf("drift %v, want %v", drift, want)
		}
	}
	got, _ := dp.Programmed(ctx)
	if len(got) != 2 || !datapath.Equal(got["ns/b"], service("ns/b", "10.96.0.2")) || got["ns/a"] == nil {
		t.Fatalf("after repair: %v", got)
	}
	if drift, err := r.Repair(ctx); err != nil || len(drift) != 0 {
		t.Fatalf("second repair found %v, %v", drift, err)
	}
}
