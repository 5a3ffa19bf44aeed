package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/internal/cgroup"
	"github.com/spoke-proxy/spoke/internal/netns"
)

// The local cluster's network. Nodes hang off a bridge in the host's
// namespace, which is also "outside" (where external clients and the
// control plane are); each node routes its pod CIDR and reaches the other
// nodes' pods through their node addresses:
//
//	host (control plane, external clients) 192.168.200.254
//	  └─ spkl-br0 ─┬─ node-1 eth0 192.168.200.1 ─ cbr0 10.244.1.1/24 ─┬─ pod 10.244.1.10
//	               │                                                  └─ client 10.244.1.100
//	               ├─ node-2 eth0 192.168.200.2 ─ cbr0 10.244.2.1/24 ─ ...
//	               └─ node-3 ...
//
// Each node has a cgroup of its own: its agent load-balances the sockets of
// the processes in it (its pods), and nothing else on the host.
const (
	prefix     = "spkl"
	bridgeName = prefix + "-br0"
)

var (
	hostAddr = netip.MustParsePrefix("192.168.200.254/24")
	// lbRange holds the demo's load-balancer IPs; the host routes it to
	// node-1, as an external load balancer would send it to some node.
	lbRange = netip.MustParsePrefix("192.168.201.0/24")
)

func nodeAddr(i int) netip.Addr   { return netip.AddrFrom4([4]byte{192, 168, 200, byte(i)}) }
func podGateway(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 244, byte(i), 1}) }
func podAddr(i, j int) netip.Addr { return netip.AddrFrom4([4]byte{10, 244, byte(i), byte(j)}) }
func podCIDR(i int) netip.Prefix  { return netip.PrefixFrom(podGateway(i), 24).Masked() }

// clientPod is the host part of each node's client pod.
const clientPod = 100

// topology is the namespaces, devices and cgroups of the local cluster.
type topology struct {
	nodes      int
	cgroupRoot string // holds one cgroup per node
	created    []*netns.NS
}

// node is one node's place in the topology.
type node struct {
	index  int
	name   string
	ns     *netns.NS
	cgroup string
}

// cleanupTopology removes what an earlier run may have left: the bridge,
// the namespaces and the cgroups (the eBPF pins are the agents' to remove).
func cleanupTopology() error {
	errs := []error{netns.RemoveAll(bridgeName, prefix)}
	if root, err := cgroup.Root(); err == nil {
		errs = append(errs, removeCgroups(filepath.Join(root, prefix)))
	}
	return errors.Join(errs...)
}

// removeCgroups removes a cgroup and the cgroups in it, which must hold no
// process.
func removeCgroups(dir string) error {
	var errs []error
	subs, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, d := range subs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			errs = append(errs, ignoreMissing(os.Remove(d)))
		}
	}
	return errors.Join(append(errs, ignoreMissing(os.Remove(dir)))...)
}

func ignoreMissing(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// newTopology builds the bridge, nodes and cgroups.
func newTopology(nodes int) (*topology, []*node, error) {
	root, err := cgroup.Root()
	if err != nil {
		return nil, nil, err
	}
	t := &topology{nodes: nodes, cgroupRoot: filepath.Join(root, prefix)}
	if err := os.MkdirAll(t.cgroupRoot, 0o755); err != nil {
		return nil, nil, fmt.Errorf("creating cgroups: %w", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
	if err := netlink.LinkAdd(br); err != nil {
		return t, nil, fmt.Errorf("adding bridge %s: %w", bridgeName, err)
	}
	if err := netlink.AddrAdd(br, nlAddr(hostAddr)); err != nil {
		return t, nil, err
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return t, nil, err
	}
	var out []*node
	for i := 1; i <= nodes; i++ {
		n, err := t.addNode(i, br)
		if err != nil {
			return t, nil, fmt.Errorf("node %d: %w", i, err)
		}
		out = append(out, n)
	}
	// An external load balancer in front of node-1.
	if err := netlink.RouteAdd(&netlink.Route{Dst: ipNet(lbRange), Gw: nodeAddr(1).AsSlice(), LinkIndex: br.Index}); err != nil {
		return t, nil, fmt.Errorf("routing the load-balancer range: %w", err)
	}
	return t, out, nil
}

func (t *topology) newNS(name string) (*netns.NS, *netlink.Handle, error) {
	ns, err := netns.New(prefix + "-" + name)
	if err != nil {
		return nil, nil, err
	}
	t.created = append(t.created, ns)
	h, err := netns.Handle(ns.Path())
	if err != nil {
		return nil, nil, err
	}
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	return ns, h, err
}

func (t *topology) addNode(i int, br netlink.Link) (*node, error) {
	n := &node{index: i, name: fmt.Sprintf("node-%d", i), cgroup: filepath.Join(t.cgroupRoot, fmt.Sprintf("node-%d", i))}
	if err := os.MkdirAll(n.cgroup, 0o755); err != nil {
		return nil, err
	}
	ns, h, err := t.newNS(n.name)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	n.ns = ns
	err = ns.Do(func() error {
		return sysctls(map[string]string{
			"net/ipv4/ip_forward":             "1",
			"net/ipv4/conf/all/rp_filter":     "0",
			"net/ipv4/conf/default/rp_filter": "0",
		})
	})
	if err != nil {
		return nil, err
	}
	// The node's uplink: eth0 in the node, its peer on the bridge.
	root, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	eth0, err := cable(root, fmt.Sprintf("%s-n%d", prefix, i), br.Attrs().Name, ns, h, netip.PrefixFrom(nodeAddr(i), 24))
	if err != nil {
		return nil, err
	}
	// The pod bridge, and routes to the other nodes' pods.
	cbr := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cbr0"}}
	if err := h.LinkAdd(cbr); err != nil {
		return nil, err
	}
	if err := h.AddrAdd(cbr, nlAddr(netip.PrefixFrom(podGateway(i), 24))); err != nil {
		return nil, err
	}
	if err := h.LinkSetUp(cbr); err != nil {
		return nil, err
	}
	for j := 1; j <= t.nodes; j++ {
		if j == i {
			continue
		}
		if err := h.RouteAdd(&netlink.Route{Dst: ipNet(podCIDR(j)), Gw: nodeAddr(j).AsSlice(), LinkIndex: eth0.Attrs().Index}); err != nil {
			return nil, fmt.Errorf("route to node-%d's pods: %w", j, err)
		}
	}
	return n, nil
}

// pod is a network namespace on a node's pod bridge.
type pod struct {
	name string
	node *node
	ns   *netns.NS
	addr netip.Addr
}

// addPod plugs a new pod namespace into n's pod bridge at 10.244.n.host.
func (t *topology) addPod(n *node, name string, host int) (*pod, error) {
	p := &pod{name: name, node: n, addr: podAddr(n.index, host)}
	ns, h, err := t.newNS(fmt.Sprintf("%s-%s", n.name, name))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	p.ns = ns
	nh, err := netns.Handle(n.ns.Path())
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	eth0, err := cable(nh, fmt.Sprintf("veth%d", host), "cbr0", ns, h, netip.PrefixFrom(p.addr, 24))
	if err != nil {
		return nil, err
	}
	if err := h.RouteAdd(&netlink.Route{Gw: podGateway(n.index).AsSlice(), LinkIndex: eth0.Attrs().Index}); err != nil {
		return nil, fmt.Errorf("default route of pod %s: %w", name, err)
	}
	return p, nil
}

// cable makes a veth pair: one end, named here, in the namespace of hh,
// enslaved to bridge and up; the other, eth0, in ns (whose handle is nh)
// with addr, up. It returns eth0.
func cable(hh *netlink.Handle, here, bridge string, ns *netns.NS, nh *netlink.Handle, addr netip.Prefix) (netlink.Link, error) {
	fd, err := vnetns.GetFromPath(ns.Path())
	if err != nil {
		return nil, err
	}
	defer fd.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: here}, PeerName: "eth0", PeerNamespace: netlink.NsFd(fd)}
	if err := hh.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("adding veth %s: %w", here, err)
	}
	end, err := hh.LinkByName(here)
	if err != nil {
		return nil, err
	}
	br, err := hh.LinkByName(bridge)
	if err != nil {
		return nil, err
	}
	if err := hh.LinkSetMaster(end, br); err != nil {
		return nil, err
	}
	if err := hh.LinkSetUp(end); err != nil {
		return nil, err
	}
	eth0, err := nh.LinkByName("eth0")
	if err != nil {
		return nil, err
	}
	if err := nh.AddrAdd(eth0, nlAddr(addr)); err != nil {
		return nil, err
	}
	return eth0, nh.LinkSetUp(eth0)
}

// close removes the bridge, every namespace and the cgroups. Processes in
// them must be gone.
func (t *topology) close() error {
	var errs []error
	if l, err := netlink.LinkByName(bridgeName); err == nil {
		errs = append(errs, netlink.LinkDel(l))
	}
	for _, ns := range t.created {
		errs = append(errs, ns.Close())
	}
	if t.cgroupRoot != "" {
		errs = append(errs, removeCgroups(t.cgroupRoot))
	}
	return errors.Join(errs...)
}

func sysctls(kv map[string]string) error {
	for k, v := range kv {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func nlAddr(p netip.Prefix) *netlink.Addr { return &netlink.Addr{IPNet: ipNet(p)} }
