package ebpf

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/conformance/kernel"
	"github.com/spoke-proxy/spoke/internal/netns"
	"github.com/spoke-proxy/spoke/internal/testnet"
	"github.com/spoke-proxy/spoke/internal/wait"
)

// Reset implements kernel.Datapath: no services, no node addresses, no
// flows.
func (d *Datapath) Reset(ctx context.Context) error {
	if err := kernel.Empty(ctx, d); err != nil {
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
	kernel.Run(t, lab, d, kernel.Options{
		ServiceAt: d.serviceAt,
		Settle:    func(ctx context.Context) error { return d.podDevicesFollowed(ctx, lab.NodeNS()) },
	})
}

// podDevicesFollowed waits until the pod programs are on every pod device
// of the node: the watcher attaches to a device once it has appeared, so a
// packet sent from behind a device created a moment ago may leave before
// (as a new pod's first packets may; see doc.go).
func (d *Datapath) podDevicesFollowed(ctx context.Context, ns *netns.NS) error {
	return wait.Until(ctx, 5*time.Second, func() error {
		h, err := netns.Handle(ns.Path())
		if err != nil {
			return err
		}
		defer h.Close()
		links, err := h.LinkList()
		if err != nil {
			return err
		}
		a := d.attach
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, l := range links {
			if name := l.Attrs().Name; a.isPod(name) && a.pods[name] != l.Attrs().Index {
				return fmt.Errorf("pod device %s: the pod programs are not attached yet", name)
			}
		}
		return nil
	})
}

// serviceAt names the programmed service with a frontend at the packet's
// destination, for messages.
func (d *Datapath) serviceAt(pkt datapath.Packet) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	proto, err := toProto(pkt.Protocol)
	if err != nil {
		return ""
	}
	k := lbSvcKey{Addr: toAddr(pkt.Dst.Addr()), Port: toPort(pkt.Dst.Port()), Proto: proto, Scope: scopeAddr}
	if id, ok := d.owners[k]; ok {
		return d.state.byID[id].key
	}
	return ""
}
