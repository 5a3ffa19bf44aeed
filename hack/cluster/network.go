package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/internal/netns"
)

// The cluster's network. Every node is a network namespace whose eth0 is
// plugged into a bridge in the host's namespace; the host holds the API
// server's and the control plane's front addresses on that bridge. Each
// node's pods live on a CNI bridge (cbr0) in the node, and every node (and
// the host) routes the other nodes' pod CIDRs through their node
// addresses. A pod's default route is its node's cbr0 address (the CNI
// bridge's isDefaultGateway): the backends a ClusterIP is rewritten to may
// be off the pod CIDRs (the API server's endpoint is on the host's
// bridge). No node and not the host has a default route: nothing leaves the
// machine.
//
//	host 192.168.220.254 (API server, control-plane front, NodePort clients)
//	  └─ spkc-br0 ─┬─ node-1 eth0 192.168.220.1 ─ cbr0 10.246.1.1/24 ─ pods
//	               └─ node-2 eth0 192.168.220.2 ─ cbr0 10.246.2.1/24 ─ pods
const (
	prefix     = "spkc"
	bridgeName = prefix + "-br0"
)

var hostAddr = netip.MustParsePrefix("192.168.220.254/24")

func nodeAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 220, byte(i)}) }
func podCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 246, byte(i), 0}), 24)
}
func nodeNSName(i int) string { return fmt.Sprintf("%s-node-%d", prefix, i) }

// removeNetwork removes the bridge and every namespace of the cluster (the
// veths go with their namespaces).
func removeNetwork() error { return netns.RemoveAll(bridgeName, prefix) }

// buildNetwork makes the bridge and n node namespaces.
func buildNetwork(n int) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("adding bridge %s: %w", bridgeName, err)
	}
	if err := netlink.AddrAdd(br, nlAddr(hostAddr)); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return err
	}
	for i := 1; i <= n; i++ {
		if err := addNode(i, n, br); err != nil {
			return fmt.Errorf("node %d: %w", i, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{Dst: ipNet(podCIDR(i)), Gw: nodeAddr(i).AsSlice(), LinkIndex: br.Index}); err != nil {
			return fmt.Errorf("host route to node %d's pods: %w", i, err)
		}
	}
	return nil
}

func addNode(i, n int, br netlink.Link) error {
	ns, err := netns.New(nodeNSName(i))
	if err != nil {
		return err
	}
	fd, err := vnetns.GetFromPath(ns.Path())
	if err != nil {
		return err
	}
	defer fd.Close()
	h, err := netlink.NewHandleAt(fd, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	// Namespace-local settings: a node forwards between its pods and eth0.
	err = ns.Do(func() error {
		for k, v := range map[string]string{
			"net/ipv4/ip_forward":             "1",
			"net/ipv4/conf/all/rp_filter":     "0",
			"net/ipv4/conf/default/rp_filter": "0",
		} {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		if err := h.LinkSetUp(lo); err != nil {
			return err
		}
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("%s-n%d", prefix, i), MasterIndex: br.Attrs().Index}, PeerName: "eth0", PeerNamespace: netlink.NsFd(fd)}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth: %w", err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return err
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := h.AddrAdd(eth0, nlAddr(netip.PrefixFrom(nodeAddr(i), 24))); err != nil {
		return err
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return err
	}
	for j := 1; j <= n; j++ {
		if j == i {
			continue
		}
		if err := h.RouteAdd(&netlink.Route{Dst: ipNet(podCIDR(j)), Gw: nodeAddr(j).AsSlice(), LinkIndex: eth0.Attrs().Index}); err != nil {
			return fmt.Errorf("route to node %d's pods: %w", j, err)
		}
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func nlAddr(p netip.Prefix) *netlink.Addr { return &netlink.Addr{IPNet: ipNet(p)} }

// forward accepts TCP connections on addr and relays each to the first of
// targets that accepts it, until ctx ends. It is the API server's address
// on the bridge (the API server listens on loopback only) and the load
// balancer in front of the control-plane pods' host addresses.
func forward(ctx context.Context, log *slog.Logger, addr string, targets func() []string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go relay(log, c, targets())
		}
	}()
	return nil
}

func relay(log *slog.Logger, c net.Conn, targets []string) {
	defer c.Close()
	var up net.Conn
	for _, t := range targets {
		var err error
		if up, err = net.Dial("tcp", t); err == nil {
			break
		}
	}
	if up == nil {
		log.Debug("no target accepts", "targets", targets)
		return
	}
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(up, c)
		_ = up.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(c, up)
	_ = c.(*net.TCPConn).CloseWrite()
	wg.Wait()
}
