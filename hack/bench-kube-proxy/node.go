package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spoke-proxy/spoke/internal/netns"
)

// Every node is the same small network, each in namespaces of its own, so
// the same addresses repeat without clashing:
//
//	node (the proxy, clients on the node)  be0 192.168.250.1/24
//	  └─ backends: eth0 192.168.250.2/24, every address of 172.16.0.0/12
//	     local (one responder answers for every endpoint)
//
// The node routes the endpoint range to the backends' namespace and has a
// default route there too, so that a ClusterIP nobody translated is
// dropped there instead of failing the route lookup.
var (
	nodeIP      = netip.MustParseAddr("192.168.250.1")
	backendGW   = netip.MustParseAddr("192.168.250.2")
	endpointNet = netip.MustParsePrefix("172.16.0.0/12")
)

// responderPort is where every endpoint answers.
const responderPort = 8080

// node is one network-namespace node and its cgroups: the node's (the
// eBPF agent's cgroup root) holds proxy/ for the proxy (its CPU is read
// there, its children's included) and pod/ for clients; the backends'
// responder runs in a cgroup beside it, out of the agent's reach.
type node struct {
	name      string
	ns        *netns.NS
	backendNS *netns.NS
	cgroup    string
	procs     []*proc
}

func (n *node) proxyCgroup() string   { return filepath.Join(n.cgroup, "proxy") }
func (n *node) podCgroup() string     { return filepath.Join(n.cgroup, "pod") }
func (n *node) backendCgroup() string { return n.cgroup + "-be" }

// cgroups are the node's cgroup folders, parents first.
func (n *node) cgroups() []string {
	return []string{n.cgroup, n.proxyCgroup(), n.podCgroup(), n.backendCgroup()}
}

// newNode builds a node named name (its Kubernetes node name), with
// backends when withBackends is set.
func (b *bench) newNode(name string, withBackends bool) (*node, error) {
	n := &node{name: name, cgroup: filepath.Join(b.cgroupRoot, name)}
	b.nodes = append(b.nodes, n)
	if err := n.makeCgroups(); err != nil {
		return n, err
	}
	var err error
	if n.ns, err = netns.New(b.id + "-" + name); err != nil {
		return n, err
	}
	if err := ip(n.ns, "link", "set", "lo", "up"); err != nil {
		return n, err
	}
	if !withBackends {
		return n, nil
	}
	if n.backendNS, err = netns.New(b.id + "-" + name + "-be"); err != nil {
		return n, err
	}
	steps := [][]string{
		{n.ns.Name(), "link", "add", "be0", "type", "veth", "peer", "name", "eth0", "netns", n.backendNS.Name()},
		{n.ns.Name(), "addr", "add", nodeIP.String() + "/24", "dev", "be0"},
		{n.ns.Name(), "link", "set", "be0", "up"},
		{n.ns.Name(), "route", "add", endpointNet.String(), "via", backendGW.String()},
		{n.ns.Name(), "route", "add", "default", "via", backendGW.String()},
		{n.backendNS.Name(), "link", "set", "lo", "up"},
		{n.backendNS.Name(), "addr", "add", backendGW.String() + "/24", "dev", "eth0"},
		{n.backendNS.Name(), "link", "set", "eth0", "up"},
		{n.backendNS.Name(), "route", "add", "local", endpointNet.String(), "dev", "lo"},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", append([]string{"-n"}, s...)...).CombinedOutput(); err != nil {
			return n, fmt.Errorf("ip -n %s: %w: %s", strings.Join(s, " "), err, out)
		}
	}
	p, err := b.start(n.backendCgroup(), n.backendNS, n.name+"-responder", os.Args[0], respondCommand, "-port", strconv.Itoa(responderPort))
	if err != nil {
		return n, err
	}
	n.procs = append(n.procs, p)
	return n, waitListening(n, netip.AddrPortFrom(endpoint(0, 0), responderPort))
}

func ip(ns *netns.NS, args ...string) error {
	if out, err := exec.Command("ip", append([]string{"-n", ns.Name()}, args...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s %s: %w: %s", ns.Name(), strings.Join(args, " "), err, out)
	}
	return nil
}

// waitListening waits until the node's responder answers at a.
func waitListening(n *node, a netip.AddrPort) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := n.dial(context.Background(), a.String())
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("responder on %s: %w", n.name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dial connects to addr from inside the node's namespace (from this
// process: outside the node's cgroups, so no proxy's socket hooks apply).
func (n *node) dial(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// listen opens a TCP listener on the node's loopback.
func (n *node) listen() (net.Listener, error) {
	var l net.Listener
	err := n.ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	return l, err
}

// httpClient reaches HTTP servers inside the node's namespace.
func (n *node) httpClient() *http.Client {
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return n.dial(ctx, addr) }},
	}
}

// stopProcs stops the node's processes, newest first.
func (n *node) stopProcs() {
	for i := len(n.procs) - 1; i >= 0; i-- {
		n.procs[i].stop()
	}
	n.procs = nil
}

// close stops the node's processes and removes its namespaces and cgroups.
func (n *node) close() error {
	n.stopProcs()
	var errs []error
	for _, ns := range []*netns.NS{n.ns, n.backendNS} {
		if ns != nil {
			errs = append(errs, ns.Close())
		}
	}
	cgs := n.cgroups()
	for i := len(cgs) - 1; i >= 0; i-- {
		errs = append(errs, removeCgroup(cgs[i]))
	}
	return errors.Join(errs...)
}

func (n *node) makeCgroups() error {
	for _, cg := range n.cgroups() {
		if err := os.MkdirAll(cg, 0o755); err != nil {
			return fmt.Errorf("creating cgroups: %w", err)
		}
	}
	return nil
}

// removeCgroup removes an empty cgroup, waiting briefly for the processes
// that just exited to leave it.
func removeCgroup(dir string) error {
	var err error
	for range 50 {
		err = os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("removing cgroup: %w", err)
}

// endpoint is the address of service i's endpoint j.
func endpoint(i, j int) netip.Addr {
	return offset(endpointNet.Addr(), uint32(i*endpointsPerService+j+1))
}

// churnAddr is the k-th address handed out by endpoint changes, above every
// initial endpoint (172.24.0.0 and up).
func churnAddr(k int) netip.Addr {
	return offset(netip.MustParseAddr("172.24.0.0"), uint32(k+1))
}

func offset(a netip.Addr, n uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
