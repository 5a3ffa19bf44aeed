package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/cgroup"
	"github.com/spoke-proxy/spoke/internal/netns"
)

// The node's interfaces, by name.
const (
	// ExternalDevice is the node's interface towards the outside.
	ExternalDevice = "eth0"
	// WorldDevice is the node's interface towards every other address:
	// its default route.
	WorldDevice = "sink0"
	// PodDevice is the node's end of the pod's interface.
	PodDevice = "pod0"
	// BackendDevices matches (path.Match) the node's ends of the local
	// backends' interfaces, which come and go with backends.
	BackendDevices = backendDevice + "*"
	backendDevice  = "be"
)

// Addresses the lab's plumbing uses: every node-side veth has gw4 and gw6,
// the outside has outside4/6 towards the node, the world has world4/6.
var (
	gw4      = netip.MustParseAddr("169.254.0.1")
	gw6      = netip.MustParseAddr("fe80::1")
	outside4 = netip.MustParseAddr("169.254.0.2")
	outside6 = netip.MustParseAddr("fe80::2")
	world4   = netip.MustParseAddr("169.254.0.3")
	world6   = netip.MustParseAddr("fe80::3")
	// pod4 keeps the pod's routes alive while client addresses come and
	// go (Linux flushes a device's IPv4 routes with its last address).
	pod4 = netip.MustParseAddr("169.254.0.4")
	pod6 = netip.MustParseAddr("fe80::4")
)

// Options configure a Lab.
type Options struct {
	// Timeout is how long a packet may go unanswered before it counts as
	// dropped: 1s, or 5s when SPOKE_VM is set (an emulated guest).
	Timeout time.Duration
}

// Lab is a node and its surroundings. Its methods are safe for one
// goroutine at a time.
type Lab struct {
	opts Options
	id   string

	node, outside, world, pod *netns.NS
	handles                   map[*netns.NS]*netlink.Handle

	cgroupRoot, podCgroup string

	mu         sync.Mutex
	nodeAddrs  []netip.Addr
	backends   map[netip.Addr]*backend
	nextVeth   int
	extra      []extraAddr
	responders map[responderKey]*responder
	client     *helper // runs what starts on the node
	local      *prober // runs what starts outside
}

type backend struct {
	ns     *netns.NS
	dev    string // its veth on the node (or the outside, when remote)
	remote bool
}

// extraAddr is an address added on demand, with the node route to it.
type extraAddr struct {
	ns    *netns.NS
	dev   string
	addr  netip.Addr
	route *netlink.Route // in the node, or nil
}

// New builds a lab. Close removes it.
func New(opts Options) (*Lab, error) {
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
		if os.Getenv("SPOKE_VM") != "" {
			opts.Timeout = 5 * time.Second
		}
	}
	var b [3]byte
	rand.Read(b[:])
	l := &Lab{
		opts:       opts,
		id:         hex.EncodeToString(b[:]),
		handles:    map[*netns.NS]*netlink.Handle{},
		backends:   map[netip.Addr]*backend{},
		responders: map[responderKey]*responder{},
		local:      newProber(),
	}
	if err := l.build(); err != nil {
		l.Close()
		return nil, fmt.Errorf("building the test network: %w", err)
	}
	return l, nil
}

// NewForTest builds a lab for a test and removes it when the test ends. A
// test that cannot have one (no root, no cgroup v2) fails under Strict and
// is skipped otherwise.
func NewForTest(t testing.TB, opts Options) *Lab {
	t.Helper()
	RequireRoot(t)
	_, err := cgroup.Root()
	Require(t, err == nil, "a cgroup v2 mount")
	l, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("removing the test network: %v", err)
		}
	})
	return l
}

func (l *Lab) nsName(role string) string { return fmt.Sprintf("spk%s-%s", l.id, role) }

func (l *Lab) newNS(role string, sysctls map[string]string) (*netns.NS, error) {
	ns, err := netns.New(l.nsName(role))
	if err != nil {
		return nil, err
	}
	h, err := netns.Handle(ns.Path())
	if err != nil {
		ns.Close()
		return nil, err
	}
	l.handles[ns] = h
	base := map[string]string{
		"net/ipv6/conf/all/accept_dad":     "0",
		"net/ipv6/conf/default/accept_dad": "0",
		"net/ipv6/conf/all/disable_ipv6":   "0",
		"net/ipv4/conf/all/rp_filter":      "0",
		"net/ipv4/conf/default/rp_filter":  "0",
	}
	for k, v := range sysctls {
		base[k] = v
	}
	if err := setSysctls(ns, base); err != nil {
		return ns, err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return ns, err
	}
	return ns, h.LinkSetUp(lo)
}

func setSysctls(ns *netns.NS, kv map[string]string) error {
	err := ns.Do(func() error {
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sysctls of %s: %w", ns.Name(), err)
	}
	return nil
}

// fastNeighbors makes a device retry neighbor resolution after 100ms
// instead of a second: a solicitation sent while a new veth comes up can
// be lost.
func fastNeighbors(ns *netns.NS, dev string) error {
	return setSysctls(ns, map[string]string{
		"net/ipv4/neigh/" + dev + "/retrans_time_ms": "100",
		"net/ipv6/neigh/" + dev + "/retrans_time_ms": "100",
	})
}

var forwarding = map[string]string{
	"net/ipv4/ip_forward":              "1",
	"net/ipv6/conf/all/forwarding":     "1",
	"net/ipv6/conf/default/forwarding": "1",
}

func (l *Lab) build() error {
	root, err := cgroup.Root()
	if err != nil {
		return err
	}
	l.cgroupRoot = filepath.Join(root, "spoke-lab-"+l.id)
	l.podCgroup = filepath.Join(l.cgroupRoot, "pod")
	if err := os.MkdirAll(l.podCgroup, 0o755); err != nil {
		return fmt.Errorf("creating cgroups: %w", err)
	}
	if l.node, err = l.newNS("node", forwarding); err != nil {
		return err
	}
	if l.outside, err = l.newNS("outside", forwarding); err != nil {
		return err
	}
	if l.world, err = l.newNS("world", nil); err != nil {
		return err
	}
	if l.pod, err = l.newNS("pod", nil); err != nil {
		return err
	}
	if err := l.wire(l.node, ExternalDevice, l.outside, outside4, outside6); err != nil {
		return err
	}
	if err := l.wire(l.node, WorldDevice, l.world, world4, world6); err != nil {
		return err
	}
	if err := l.wire(l.node, PodDevice, l.pod, pod4, pod6); err != nil {
		return err
	}
	node := l.handles[l.node]
	for _, r := range []*netlink.Route{
		defaultVia(node, WorldDevice, world4),
		defaultVia(node, WorldDevice, world6),
	} {
		if err := node.RouteAdd(r); err != nil {
			return fmt.Errorf("node default route: %w", err)
		}
	}
	for _, ns := range []*netns.NS{l.outside, l.world, l.pod} {
		if err := l.defaultRoutes(ns, "eth0", gw4, gw6); err != nil {
			return err
		}
	}
	return nil
}

// wire connects a's device dev to b's eth0. a's end has the gateway
// addresses; b's end has peer4/6 if they are valid.
func (l *Lab) wire(a *netns.NS, dev string, b *netns.NS, peer4, peer6 netip.Addr) error {
	return l.wireWith(a, dev, b, []netip.Addr{gw4, gw6}, peer4, peer6)
}

// wireWith is wire with a's end holding local instead of the gateway
// addresses.
func (l *Lab) wireWith(a *netns.NS, dev string, b *netns.NS, local []netip.Addr, peer4, peer6 netip.Addr) error {
	ha, hb := l.handles[a], l.handles[b]
	fd, err := vnetns.GetFromPath(b.Path())
	if err != nil {
		return err
	}
	defer fd.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: dev}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(fd))}
	if err := ha.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s: %w", dev, err)
	}
	if err := errors.Join(fastNeighbors(a, dev), fastNeighbors(b, "eth0")); err != nil {
		return err
	}
	if err := addAddrs(ha, dev, local...); err != nil {
		return err
	}
	if err := addAddrs(hb, "eth0", peer4, peer6); err != nil {
		return err
	}
	for _, h := range []*netlink.Handle{ha, hb} {
		name := dev
		if h == hb {
			name = "eth0"
		}
		link, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(link); err != nil {
			return err
		}
	}
	for _, h := range []*netlink.Handle{ha, hb} {
		name := dev
		if h == hb {
			name = "eth0"
		}
		if err := waitUp(h, name); err != nil {
			return err
		}
	}
	for _, peer := range []netip.Addr{peer4} {
		if peer.IsValid() {
			link, _ := ha.LinkByName(dev)
			if err := ha.RouteAdd(hostRoute(link, peer)); err != nil {
				return fmt.Errorf("route to %s: %w", peer, err)
			}
		}
	}
	return nil
}

// waitUp waits for the kernel to finish bringing a device up: until then
// (the link watch runs asynchronously) its queue drops what is sent.
func waitUp(h *netlink.Handle, dev string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		link, err := h.LinkByName(dev)
		if err != nil {
			return err
		}
		if link.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s did not come up (state %s)", dev, link.Attrs().OperState)
		}
		time.Sleep(time.Millisecond)
	}
}

// defaultRoutes makes gw4/gw6 on dev the way out of ns.
func (l *Lab) defaultRoutes(ns *netns.NS, dev string, via4, via6 netip.Addr) error {
	h := l.handles[ns]
	link, err := h.LinkByName(dev)
	if err != nil {
		return err
	}
	if err := h.RouteAdd(hostRoute(link, via4)); err != nil {
		return fmt.Errorf("%s: route to %s: %w", ns.Name(), via4, err)
	}
	for _, via := range []netip.Addr{via4, via6} {
		if err := h.RouteAdd(defaultVia(h, dev, via)); err != nil {
			return fmt.Errorf("%s: default route via %s: %w", ns.Name(), via, err)
		}
	}
	return nil
}

func addAddrs(h *netlink.Handle, dev string, addrs ...netip.Addr) error {
	link, err := h.LinkByName(dev)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if !a.IsValid() {
			continue
		}
		if err := h.AddrAdd(link, nlAddr(a)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding %s to %s: %w", a, dev, err)
		}
	}
	return nil
}

func nlAddr(a netip.Addr) *netlink.Addr {
	bits := a.BitLen()
	if a.Is6() && a.IsLinkLocalUnicast() {
		bits = 64
	}
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}, Flags: unix.IFA_F_NODAD}
}

func hostRoute(link netlink.Link, dst netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(dst.BitLen(), dst.BitLen())},
		Scope:     netlink.SCOPE_LINK,
	}
}

func viaRoute(link netlink.Link, dst, via netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(dst.BitLen(), dst.BitLen())},
		Gw:        via.AsSlice(),
	}
}

func defaultVia(h *netlink.Handle, dev string, via netip.Addr) *netlink.Route {
	link, err := h.LinkByName(dev)
	if err != nil {
		return &netlink.Route{}
	}
	bits := via.BitLen()
	zero := netip.IPv4Unspecified()
	if via.Is6() {
		zero = netip.IPv6Unspecified()
	}
	return &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: zero.AsSlice(), Mask: net.CIDRMask(0, bits)},
		Gw:        via.AsSlice(),
	}
}

// NodeNS returns the node's network namespace, where a datapath attaches.
func (l *Lab) NodeNS() *netns.NS { return l.node }

// CgroupPath returns the cgroup that holds the node's pods and clients:
// where a datapath attaches its socket programs.
func (l *Lab) CgroupPath() string { return l.cgroupRoot }

// SetNodeAddrs puts the node's addresses on its external device.
func (l *Lab) SetNodeAddrs(addrs []netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.handles[l.node]
	link, err := h.LinkByName(ExternalDevice)
	if err != nil {
		return err
	}
	for _, a := range l.nodeAddrs {
		if !slices.Contains(addrs, a) {
			if err := h.AddrDel(link, nlAddr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("removing node address %s: %w", a, err)
			}
		}
	}
	if err := addAddrs(h, ExternalDevice, addrs...); err != nil {
		return err
	}
	l.nodeAddrs = slices.Clone(addrs)
	return nil
}

// AddBackend makes addr a backend that answers proto on its port: in a
// namespace of its own behind the node, or behind the outside (on another
// node) when remote.
func (l *Lab) AddBackend(addr netip.AddrPort, proto datapath.Protocol, remote bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, err := l.backendNS(addr.Addr(), remote)
	if err != nil {
		return err
	}
	_, err = l.respond(b.ns, "backend", addr, proto)
	return err
}

func (l *Lab) backendNS(a netip.Addr, remote bool) (*backend, error) {
	if b, ok := l.backends[a]; ok {
		if b.remote != remote {
			return nil, fmt.Errorf("backend %s is both local and remote", a)
		}
		return b, nil
	}
	l.nextVeth++
	dev := fmt.Sprintf("%s%d", backendDevice, l.nextVeth)
	ns, err := l.newNS(fmt.Sprintf("b%d", l.nextVeth), nil)
	if err != nil {
		return nil, err
	}
	b := &backend{ns: ns, dev: dev, remote: remote}
	l.backends[a] = b
	// The outside's end of a remote backend's veth answers as the outside.
	host, via4, via6 := l.node, gw4, gw6
	if remote {
		host, via4, via6 = l.outside, outside4, outside6
	}
	if err := l.wireWith(host, dev, ns, []netip.Addr{via4, via6}, netip.Addr{}, netip.Addr{}); err != nil {
		return nil, err
	}
	if err := addAddrs(l.handles[ns], "eth0", a); err != nil {
		return nil, err
	}
	if err := l.defaultRoutes(ns, "eth0", via4, via6); err != nil {
		return nil, err
	}
	hh := l.handles[host]
	link, err := hh.LinkByName(dev)
	if err != nil {
		return nil, err
	}
	if err := hh.RouteAdd(hostRoute(link, a)); err != nil {
		return nil, fmt.Errorf("route to backend %s: %w", a, err)
	}
	if remote {
		node := l.handles[l.node]
		ext, err := node.LinkByName(ExternalDevice)
		if err != nil {
			return nil, err
		}
		via := outside4
		if a.Is6() {
			via = outside6
		}
		if err := node.RouteAdd(viaRoute(ext, a, via)); err != nil {
			return nil, fmt.Errorf("node route to remote backend %s: %w", a, err)
		}
	}
	return b, nil
}

// addExtra puts an address on a namespace's eth0, with a route to it from
// the node through nodeDev (via gateway via, if valid). An address that is
// elsewhere moves: one client address may send from a pod and from outside
// in turn.
func (l *Lab) addExtra(ns *netns.NS, a netip.Addr, nodeDev string, via netip.Addr) error {
	for i, e := range l.extra {
		if e.addr != a {
			continue
		}
		if e.ns == ns {
			return nil
		}
		if err := l.removeExtra(e); err != nil {
			return err
		}
		l.extra = slices.Delete(l.extra, i, i+1)
		break
	}
	if err := addAddrs(l.handles[ns], "eth0", a); err != nil {
		return err
	}
	e := extraAddr{ns: ns, dev: "eth0", addr: a}
	if nodeDev != "" {
		node := l.handles[l.node]
		link, err := node.LinkByName(nodeDev)
		if err != nil {
			return err
		}
		if via.IsValid() {
			e.route = viaRoute(link, a, via)
		} else {
			e.route = hostRoute(link, a)
		}
		if err := node.RouteAdd(e.route); err != nil {
			return fmt.Errorf("node route to %s: %w", a, err)
		}
	}
	l.extra = append(l.extra, e)
	return nil
}

func (l *Lab) removeExtra(e extraAddr) error {
	h := l.handles[e.ns]
	if link, err := h.LinkByName(e.dev); err == nil {
		if err := h.AddrDel(link, nlAddr(e.addr)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing %s: %w", e.addr, err)
		}
	}
	if e.route != nil {
		if err := l.handles[l.node].RouteDel(e.route); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("removing the route to %s: %w", e.addr, err)
		}
	}
	return nil
}

// Reset removes backends, responders and addresses added since the lab
// was built, so that one lab serves many test cases.
func (l *Lab) Reset() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reset()
}

func (l *Lab) reset() error {
	var errs []error
	for k, r := range l.responders {
		r.close()
		delete(l.responders, k)
	}
	for a, b := range l.backends {
		if h, ok := l.handles[b.ns]; ok {
			h.Close()
			delete(l.handles, b.ns)
		}
		// Delete the veth now: the namespace, and with it the veth and
		// the routes through it, goes away only later.
		host := l.node
		if b.remote {
			host = l.outside
		}
		if h, ok := l.handles[host]; ok {
			if link, err := h.LinkByName(b.dev); err == nil {
				errs = append(errs, h.LinkDel(link))
			}
		}
		errs = append(errs, b.ns.Close())
		delete(l.backends, a)
		if b.remote {
			if node, ok := l.handles[l.node]; ok {
				ext, err := node.LinkByName(ExternalDevice)
				if err == nil {
					via := outside4
					if a.Is6() {
						via = outside6
					}
					node.RouteDel(viaRoute(ext, a, via))
				}
			}
		}
	}
	for _, e := range l.extra {
		errs = append(errs, l.removeExtra(e))
	}
	l.extra = nil
	return errors.Join(errs...)
}

// Close removes the lab.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	if l.client != nil {
		errs = append(errs, l.client.close())
		l.client = nil
	}
	l.local.close()
	if l.node != nil {
		errs = append(errs, l.reset())
	}
	for ns, h := range l.handles {
		h.Close()
		errs = append(errs, ns.Close())
	}
	l.handles = map[*netns.NS]*netlink.Handle{}
	for _, dir := range []string{l.podCgroup, l.cgroupRoot} {
		if dir == "" {
			continue
		}
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
