package ipvs

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/moby/ipvs"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/netns"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// dialFromNode connects over TCP from the lab's node itself, with the
// source the kernel picks, and returns the answer line of what answered.
func dialFromNode(lab *testnet.Lab, dst netip.AddrPort) (string, error) {
	var c net.Conn
	err := netns.Do(lab.NodeNS().Path(), func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), 3*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	return bufio.NewReader(c).ReadString('\n')
}

func webService(backend string) *datapath.Service {
	return &datapath.Service{Key: "default/web", ClusterIPs: []netip.Addr{a("10.96.0.10")},
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{{Addr: ap(backend)}}}}}}
}

// TestNodeSocketsNotReachableThroughServiceAddresses checks what
// kube-proxy's IPVS mode guards against (kubernetes#72236): a socket of
// the node listening on every address must not answer on a service
// address, which is the node's own for IPVS.
func TestNodeSocketsNotReachableThroughServiceAddresses(t *testing.T) {
	_, lab := webLab(t, "10.244.1.5:8080", false)
	var l net.Listener
	err := netns.Do(lab.NodeNS().Path(), func() error {
		var err error
		l, err = net.Listen("tcp4", "0.0.0.0:2222")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(testnet.AnswerLine("node", c.LocalAddr(), c.RemoteAddr())))
			c.Close()
		}
	}()
	if answer, err := dialFromNode(lab, ap("10.96.0.10:80")); err != nil || !strings.HasPrefix(answer, "backend ") {
		t.Fatalf("the service's own port: %q, %v; want the backend", answer, err)
	}
	if answer, err := dialFromNode(lab, ap("192.168.0.1:2222")); err != nil || !strings.HasPrefix(answer, "node ") {
		t.Fatalf("the node's address: %q, %v; want the node's socket", answer, err)
	}
	if answer, err := dialFromNode(lab, ap("10.96.0.10:2222")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("a port the service lacks on its address: %q, %v; want the connection refused", answer, err)
	}
}

// TestNodeConnectionsToServicesAreMasqueraded checks that a connection the
// node itself opens to a service address (the kernel gives it that address
// as its source) reaches a backend on another node with a source that
// leads back to this node: the service address would lead to the
// backend's own node, which holds it too.
func TestNodeConnectionsToServicesAreMasqueraded(t *testing.T) {
	_, lab := webLab(t, "10.244.2.5:8080", true)
	answer, err := dialFromNode(lab, ap("10.96.0.10:80"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, peer, err := testnet.ParseAnswer(answer)
	if err != nil {
		t.Fatal(err)
	}
	if peer.Addr() == a("10.96.0.10") {
		t.Errorf("the backend on another node saw the service address %s as the source", peer)
	}
}

// TestLeftoversAndTableRepair programs a service with one datapath, then
// opens another (a restarted agent) that programs a different one: the
// first one's virtual servers and address are reported as leftovers and
// removed on request, as are a virtual server and table elements someone
// else adds, and damage to the table is noticed and repaired by Apply.
func TestLeftoversAndTableRepair(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lab := testnet.NewForTest(t, testnet.Options{})
	node := datapath.Node{Name: "n", Addresses: []netip.Addr{a("192.168.0.1")}}
	if err := lab.SetNodeAddrs(node.Addresses); err != nil {
		t.Fatal(err)
	}
	old := newDatapath(t, lab)
	if err := old.SetNode(ctx, node); err != nil {
		t.Fatal(err)
	}
	gone := webService("10.244.1.5:8080")
	gone.Ports[0].NodePort = 30080
	if err := old.Apply(ctx, []*datapath.Service{gone}, nil); err != nil {
		t.Fatal(err)
	}
	old.Close()

	d := newDatapath(t, lab)
	if err := d.SetNode(ctx, node); err != nil {
		t.Fatal(err)
	}
	lb := &datapath.Service{Key: "default/lb", LoadBalancerIPs: []netip.Addr{a("198.51.100.10")},
		SourceRanges: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{{Addr: ap("10.244.2.5:8080")}}},
			External: &datapath.Backends{NoEndpoints: datapath.Drop}}}}
	if err := d.Apply(ctx, []*datapath.Service{lb}, nil); err != nil {
		t.Fatal(err)
	}
	programmed := func() (bool, []string) {
		t.Helper()
		got, err := d.Programmed(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for k := range got {
			if strings.HasPrefix(k, leftoverPrefix) {
				left = append(left, strings.TrimPrefix(k, leftoverPrefix))
			}
		}
		slices.Sort(left)
		return datapath.Equal(got[lb.Key], lb), left
	}
	removeLeftovers := func() {
		t.Helper()
		_, left := programmed()
		keys := make([]string, len(left))
		for i, l := range left {
			keys[i] = leftoverPrefix + l
		}
		if err := d.Apply(ctx, nil, keys); err != nil {
			t.Fatal(err)
		}
	}
	ok, left := programmed()
	want := []string{"address 10.96.0.10 on spoke-ipvs0", "virtual server TCP 10.96.0.10:80", "virtual server TCP 192.168.0.1:30080"}
	if !ok || !slices.Equal(left, want) {
		t.Fatalf("after a restart: programmed %v, leftovers %q, want %q", ok, left, want)
	}
	removeLeftovers()
	if ok, left := programmed(); !ok || len(left) > 0 {
		t.Fatalf("after removing the leftovers: programmed %v, leftovers %q", ok, left)
	}

	// Someone adds a virtual server.
	h, err := ipvs.New(lab.NodeNS().Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	stray := virtual{key: vkey{addr: a("10.96.0.99"), proto: datapath.UDP, port: 53}}
	if err := h.NewService(toService(&stray)); err != nil {
		t.Fatal(err)
	}
	if _, left := programmed(); !slices.Equal(left, []string{"virtual server UDP 10.96.0.99:53"}) {
		t.Fatalf("a stray virtual server: leftovers %q", left)
	}
	removeLeftovers()
	if h.IsServicePresent(toService(&stray)) {
		t.Fatal("the stray virtual server is still there")
	}

	// Someone changes the table.
	c, done, err := d.table.conn()
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	lbKey := vkey{addr: a("198.51.100.10"), proto: datapath.TCP, port: 80}
	if err := c.SetDeleteElements(tableSet(t, setFirewall+"4"), []nftables.SetElement{{Key: frontendBytes(lbKey)}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := programmed(); ok {
		t.Fatal("the read-back did not notice a deleted source-range element")
	}
	if err := d.Apply(ctx, []*datapath.Service{lb}, nil); err != nil {
		t.Fatal(err)
	}
	if ok, left := programmed(); !ok || len(left) > 0 {
		t.Fatalf("after repair: programmed %v, leftovers %q", ok, left)
	}
	if err := c.SetAddElements(tableSet(t, setOutsideDrop+"4"), []nftables.SetElement{{Key: frontendBytes(stray.key)}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if ok, left := programmed(); !ok || !slices.Equal(left, []string{"nftables table spoke-ipvs"}) {
		t.Fatalf("an added element: programmed %v, leftovers %q", ok, left)
	}
	removeLeftovers()
	if ok, left := programmed(); !ok || len(left) > 0 {
		t.Fatalf("after removing the added element: programmed %v, leftovers %q", ok, left)
	}
}

// TestHairpin checks that a backend that reaches itself through its
// service gets an answer: without masquerading, the packet IPVS sends back
// to it carries its own address as the source, and its kernel drops it.
func TestHairpin(t *testing.T) {
	ctx, lab := webLab(t, "10.244.1.5:8080", false)
	pkt := datapath.Packet{Protocol: datapath.TCP, Src: ap("10.244.1.5:40000"), Dst: ap("10.96.0.10:80")}
	res, err := lab.Send(ctx, datapath.FromNode, pkt)
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != testnet.Reached || res.Local != ap("10.244.1.5:8080") || res.Remote != pkt.Dst {
		t.Errorf("%s: %s; want the backend itself, through the service address", pkt, res)
	}
}

// webLab is a nodeLab with webService(backend) programmed and its backend
// answering, behind the node or, when remote, on another node.
func webLab(t *testing.T, backend string, remote bool) (context.Context, *testnet.Lab) {
	t.Helper()
	ctx, lab, d := nodeLab(t)
	svc := webService(backend)
	if err := lab.AddBackend(ap(backend), datapath.TCP, remote); err != nil {
		t.Fatal(err)
	}
	if err := d.Apply(ctx, []*datapath.Service{svc}, nil); err != nil {
		t.Fatal(err)
	}
	return ctx, lab
}

// nodeLab opens a datapath on a lab of its own whose node has the address
// 192.168.0.1, with a context that ends with the test or after a minute.
func nodeLab(t *testing.T) (context.Context, *testnet.Lab, *Datapath) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	lab := testnet.NewForTest(t, testnet.Options{})
	d := newDatapath(t, lab)
	node := []netip.Addr{a("192.168.0.1")}
	if err := lab.SetNodeAddrs(node); err != nil {
		t.Fatal(err)
	}
	if err := d.SetNode(ctx, datapath.Node{Name: "n", Addresses: node}); err != nil {
		t.Fatal(err)
	}
	return ctx, lab, d
}
