package ebpf

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// TestReopenKeepsStampAndNode checks what a restarted agent relies on
// before it has read anything back: the stamp set by the previous process
// is still there, the SNAT sources are still the node's until SetNode, and
// the first Apply sees the services the maps already hold.
func TestReopenKeepsStampAndNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := labOptions(t, testnet.NewForTest(t, testnet.Options{}))
	d := newDatapath(t, opts)
	if got, err := d.Stamped(ctx); err != nil || got != nil {
		t.Fatalf("fresh maps: stamp %x, %v; want none", got, err)
	}
	node := datapath.Node{Name: "n", Addresses: []netip.Addr{netip.MustParseAddr("fd00::1"), netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.2")}}
	if err := d.SetNode(ctx, node); err != nil {
		t.Fatal(err)
	}
	svc := &datapath.Service{Key: "default/web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{{Addr: netip.MustParseAddrPort("10.244.1.5:8080")}}}}}}
	if err := d.Apply(ctx, []*datapath.Service{svc}, nil); err != nil {
		t.Fatal(err)
	}
	stamp := bytes.Repeat([]byte{0xab}, datapath.MaxStamp)
	if err := d.Stamp(ctx, stamp); err != nil {
		t.Fatal(err)
	}
	if err := d.Stamp(ctx, make([]byte, datapath.MaxStamp+1)); !errors.Is(err, datapath.ErrInvalid) {
		t.Errorf("a stamp too long: %v, want ErrInvalid", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got, err := d2.Stamped(ctx); err != nil || !bytes.Equal(got, stamp) {
		t.Errorf("after reopening: stamp %x, %v; want %x", got, err, stamp)
	}
	var cfg lbCfgVal
	if err := d2.objs.Config.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	if got4, got6 := fromAddr(cfg.Node4), fromAddr(cfg.Node6); got4 != node.Addresses[1] || got6 != node.Addresses[0] {
		t.Errorf("after reopening, before SetNode: SNAT sources %s and %s, want the node's %s and %s", got4, got6, node.Addresses[1], node.Addresses[0])
	}
	// The first Apply reads the maps back: the held service is unchanged,
	// and a second service may not take its frontend.
	clash := &datapath.Service{Key: "default/other", ClusterIPs: svc.ClusterIPs, Ports: svc.Ports}
	if err := d2.Apply(ctx, []*datapath.Service{clash}, nil); !errors.Is(err, datapath.ErrInvalid) {
		t.Errorf("a second service on a held frontend: %v, want ErrInvalid", err)
	}
	got, err := d2.Programmed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !datapath.Equal(got[svc.Key], svc) {
		t.Errorf("after reopening: programmed %v, want only %s", got, svc.Key)
	}
	if err := d2.Stamp(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := d2.Stamped(ctx); err != nil || got != nil {
		t.Errorf("after an empty stamp: %x, %v; want none", got, err)
	}
}
