package ebpf

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/spoke-proxy/spoke/datapath"
)

// TestReopenKeepsStampAndNode checks what a restarted agent relies on
// before it has read anything back: the stamp set by the previous process
// is still there, the SNAT sources are still the node's until SetNode, and
// the first Apply sees the services the maps already hold.
func TestReopenKeepsStampAndNode(t *testing.T) {
	ctx, d := labDatapath(t)
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

	d2 := reopen(t, d)
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

// TestProgrammedDuringApplies reads the maps back while applies go on: what
// Programmed takes as its state must stay exact: the maps hold what was
// applied last, and an Apply planned on that state leaves nothing behind.
func TestProgrammedDuringApplies(t *testing.T) {
	ctx, d := labDatapath(t)
	services := benchServices(200, 10)
	if err := d.Apply(ctx, services, nil); err != nil {
		t.Fatal(err)
	}
	version := func(round int) []*datapath.Service {
		out := benchServices(200, 10)
		for i, s := range out {
			if (i+round)%3 == 0 {
				ep := &s.Ports[0].Internal.Endpoints[0]
				ep.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 250, byte(round), byte(i)}), 8080)
			}
		}
		return out[:200-round%5]
	}
	done := make(chan error, 1)
	var last []*datapath.Service
	go func() {
		for round := range 40 {
			last = version(round)
			keep := map[string]bool{}
			for _, s := range last {
				keep[s.Key] = true
			}
			var remove []string
			for _, s := range services {
				if !keep[s.Key] {
					remove = append(remove, s.Key)
				}
			}
			if err := d.Apply(ctx, last, remove); err != nil {
				done <- err
				return
			}
			// Every other apply leaves room for a whole read, so that reads
			// are taken between applies as well as refused across them.
			if round%2 == 1 {
				time.Sleep(20 * time.Millisecond)
			}
		}
		done <- nil
	}()
	reads := 0
	for applying := true; applying; reads++ {
		if _, err := d.Programmed(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			applying = false
		default:
		}
	}
	check := func(d *Datapath, when string) {
		t.Helper()
		got, err := d.Programmed(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(last) {
			t.Errorf("%s: %d services programmed, want %d", when, len(got), len(last))
		}
		for _, s := range last {
			if !datapath.Equal(got[s.Key], s) {
				t.Errorf("%s: %s programmed as %+v, want %+v", when, s.Key, got[s.Key], s)
				return
			}
		}
	}
	check(d, fmt.Sprintf("after 40 applies and %d reads beside them", reads))
	// An Apply planned on the state a read installed removes every entry.
	keys := make([]string, len(last))
	for i, s := range last {
		keys[i] = s.Key
	}
	if err := d.Apply(ctx, nil, keys); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]interface{ Iterate() *ebpf.MapIterator }{"services": d.objs.Services, "slots": d.objs.Slots, "backends": d.objs.Backends, "svc_meta": d.objs.SvcMeta} {
		var k, v []byte
		if it := m.Iterate(); it.Next(&k, &v) {
			t.Errorf("after removing every service, map %s still holds entries", name)
		}
	}
}
