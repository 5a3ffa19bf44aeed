package ebpf

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/netns"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// tc verdicts (linux/pkt_cls.h).
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

// The tc programs run with BPF_PROG_RUN on packets built here, in an empty
// network namespace: no route leads anywhere, so a translated packet comes
// back to the test (TC_ACT_OK) instead of being redirected.
func TestTCProgramsRun(t *testing.T) {
	node4, node6 := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00::1")
	ctx, d, ns := progRunDatapath(t, node4, node6)
	backends := func(no datapath.NoEndpoints, eps ...string) datapath.Backends {
		b := datapath.Backends{NoEndpoints: no}
		for _, ep := range eps {
			b.Endpoints = append(b.Endpoints, datapath.Endpoint{Addr: netip.MustParseAddrPort(ep)})
		}
		return b
	}
	services := []*datapath.Service{{
		Key:             "default/web",
		ClusterIPs:      []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:96::10")},
		LoadBalancerIPs: []netip.Addr{netip.MustParseAddr("198.51.100.10")},
		SourceRanges:    []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80, NodePort: 30080,
			Internal: backends(datapath.Reject, "10.244.1.5:8080", "[fd00:244::5]:8080")}},
	}, {
		Key:        "default/empty",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11"), netip.MustParseAddr("fd00:96::11")},
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80, NodePort: 30081,
			Internal: backends(datapath.Reject)}},
	}, {
		Key:        "default/sig",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.38")},
		Ports: []datapath.Port{{Name: "sig", Protocol: datapath.SCTP, Port: 3868, NodePort: 30868,
			Internal: backends(datapath.Reject, "10.244.1.38:3868")}},
	}, {
		// externalTrafficPolicy: Local with no endpoint on this node.
		Key:        "default/local",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.12")},
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.UDP, Port: 53, NodePort: 30082,
			Internal: backends(datapath.Reject, "10.244.2.7:5353"), External: &datapath.Backends{NoEndpoints: datapath.Drop}}},
	}}
	if err := d.Apply(ctx, services, nil); err != nil {
		t.Fatal(err)
	}

	run := func(prog *ebpf.Program, in []byte) (uint32, []byte) { return progRun(t, ns, prog, in) }
	client4 := netip.MustParseAddrPort("203.0.113.50:40000")
	client6 := netip.MustParseAddrPort("[2001:db8::50]:40000")

	for _, c := range []struct {
		name     string
		in       []byte
		verdict  uint32
		want     []byte // nil: the packet must come out unchanged
		wantICMP bool   // an ICMP port unreachable back to the client
	}{{
		name: "not a service", in: tcpSYN(client4, netip.AddrPortFrom(node4, 22)),
		verdict: tcActOK,
	}, {
		name: "node port", in: tcpSYN(client4, netip.AddrPortFrom(node4, 30080)),
		verdict: tcActOK, want: tcpSYN(client4, netip.MustParseAddrPort("10.244.1.5:8080")),
	}, {
		name: "node port IPv6", in: tcpSYN(client6, netip.AddrPortFrom(node6, 30080)),
		verdict: tcActOK, want: tcpSYN(client6, netip.MustParseAddrPort("[fd00:244::5]:8080")),
	}, {
		name: "load balancer IP from an allowed source", in: tcpSYN(netip.MustParseAddrPort("203.0.113.51:40000"), netip.MustParseAddrPort("198.51.100.10:80")),
		verdict: tcActOK, want: tcpSYN(netip.MustParseAddrPort("203.0.113.51:40000"), netip.MustParseAddrPort("10.244.1.5:8080")),
	}, {
		name: "load balancer IP from a source outside the ranges", in: tcpSYN(netip.MustParseAddrPort("192.0.2.9:40000"), netip.MustParseAddrPort("198.51.100.10:80")),
		verdict: tcActShot,
	}, {
		name: "no endpoints", in: tcpSYN(client4, netip.AddrPortFrom(node4, 30081)),
		verdict: tcActRedirect, wantICMP: true,
	}, {
		name: "no endpoints IPv6", in: tcpSYN(client6, netip.AddrPortFrom(node6, 30081)),
		verdict: tcActRedirect, wantICMP: true,
	}, {
		// The port changes, and with it SCTP's CRC32c.
		name: "SCTP node port", in: sctp(client4, netip.AddrPortFrom(node4, 30868)),
		verdict: tcActOK, want: sctp(client4, netip.MustParseAddrPort("10.244.1.38:3868")),
	}, {
		name: "external traffic policy Local, no local endpoint", in: udp(client4, netip.AddrPortFrom(node4, 30082)),
		verdict: tcActShot,
	}} {
		t.Run(c.name, func(t *testing.T) {
			verdict, out := run(d.objs.TcIngress, c.in)
			if verdict != c.verdict {
				t.Fatalf("verdict %d, want %d", verdict, c.verdict)
			}
			switch {
			case c.wantICMP:
				checkPortUnreachable(t, c.in, out)
			case verdict == tcActShot:
			case c.want == nil:
				if string(out) != string(c.in) {
					t.Errorf("the packet was changed:\n%s", gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default))
				}
			default:
				if string(out) != string(c.want) {
					t.Errorf("got\n%s\nwant\n%s", gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default),
						gopacket.NewPacket(c.want, layers.LayerTypeEthernet, gopacket.Default))
				}
			}
		})
	}

	// The backends' replies to the node-port flows leave with the node
	// port as their source.
	for _, c := range []struct {
		name       string
		reply, out []byte
	}{
		{"reply translated on egress", tcpSYNACK(netip.MustParseAddrPort("10.244.1.5:8080"), client4), tcpSYNACK(netip.AddrPortFrom(node4, 30080), client4)},
		{"SCTP reply translated on egress", sctp(netip.MustParseAddrPort("10.244.1.38:3868"), client4), sctp(netip.AddrPortFrom(node4, 30868), client4)},
	} {
		t.Run(c.name, func(t *testing.T) {
			verdict, out := run(d.objs.TcEgress, c.reply)
			if verdict != tcActOK || string(out) != string(c.out) {
				t.Errorf("verdict %d, got\n%s\nwant\n%s", verdict, gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default),
					gopacket.NewPacket(c.out, layers.LayerTypeEthernet, gopacket.Default))
			}
		})
	}
	t.Run("unrelated egress untouched", func(t *testing.T) {
		pkt := tcpSYNACK(netip.MustParseAddrPort("10.244.1.9:8080"), client4)
		verdict, out := run(d.objs.TcEgress, pkt)
		if verdict != tcActOK || string(out) != string(pkt) {
			t.Errorf("verdict %d, packet changed: %v", verdict, string(out) != string(pkt))
		}
	})
}

// progRunDatapath opens a datapath for a node with these addresses, with
// pins of the test's own and a network namespace to run its programs in.
func progRunDatapath(t *testing.T, node ...netip.Addr) (context.Context, *Datapath, *netns.NS) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	d := newDatapath(t, Options{PinPath: testPinPath(), CgroupPath: testnet.Cgroup(t)})
	if err := d.SetNode(ctx, datapath.Node{Name: "n", Addresses: node}); err != nil {
		t.Fatal(err)
	}
	return ctx, d, testnet.NetNS(t)
}

// skbContext is the start of struct __sk_buff, up to the fields a test
// run may set.
type skbContext struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority uint32
	IngressIfindex, Ifindex                                                               uint32
}

// progRun runs a tc program on a packet in the namespace and returns its
// verdict and the packet as it left. The packet came in by a device (the
// namespace's loopback), as every packet does but those the node sends.
func progRun(t *testing.T, ns *netns.NS, prog *ebpf.Program, in []byte) (uint32, []byte) {
	t.Helper()
	return progRunFrom(t, ns, prog, in, 1)
}

// progRunFrom is progRun with the index of the device the packet came in
// by: 0 for a packet the node itself sends.
func progRunFrom(t *testing.T, ns *netns.NS, prog *ebpf.Program, in []byte, ingress uint32) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(in)+256)
	opts := &ebpf.RunOptions{Data: in, DataOut: out, Context: skbContext{IngressIfindex: ingress}}
	var ret uint32
	err := ns.Do(func() error {
		var err error
		ret, err = prog.Run(opts)
		return err
	})
	if err != nil {
		t.Fatalf("BPF_PROG_RUN: %v", err)
	}
	return ret, opts.DataOut
}

// The pod devices' program balances SCTP to a service with the backends for
// traffic from the node, keeping the pod's address, and leaves TCP and UDP
// (which the socket programs translated) alone; its egress program turns
// the replies' source back, and only theirs. SCTP the node itself sends is
// balanced alike on its way out by an external device.
func TestPodProgramRuns(t *testing.T) {
	node4 := netip.MustParseAddr("192.168.0.1")
	ctx, d, ns := progRunDatapath(t, node4)
	to := func(a string) datapath.Backends {
		return datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{{Addr: netip.MustParseAddrPort(a)}}}
	}
	ext, fromNode := to("10.244.2.38:3869"), to("10.244.3.38:3869")
	err := d.Apply(ctx, []*datapath.Service{{
		Key:        "default/sig",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.38")},
		Ports: []datapath.Port{{Name: "sig", Protocol: datapath.SCTP, Port: 3868, NodePort: 30868,
			Internal: to("10.244.1.38:3869"), External: &ext, ExternalFromNode: &fromNode}},
	}, {
		Key:        "default/web",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80,
			Internal: to("10.244.1.5:8080")}},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pod := netip.MustParseAddrPort("10.244.1.100:40000")
	for _, c := range []struct {
		name    string
		in, out []byte
	}{
		{"SCTP to a cluster IP", sctp(pod, netip.MustParseAddrPort("10.96.0.38:3868")), sctp(pod, netip.MustParseAddrPort("10.244.1.38:3869"))},
		{"SCTP to a node port", sctp(pod, netip.AddrPortFrom(node4, 30868)), sctp(pod, netip.MustParseAddrPort("10.244.3.38:3869"))},
		{"TCP left to the socket programs", tcpSYN(pod, netip.MustParseAddrPort("10.96.0.10:80")), nil},
		{"SCTP to no service", sctp(pod, netip.MustParseAddrPort("10.244.2.9:3868")), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			want := c.out
			if want == nil {
				want = c.in
			}
			verdict, out := progRun(t, ns, d.objs.TcPodIngress, c.in)
			if verdict != tcActOK || string(out) != string(want) {
				t.Errorf("verdict %d, got\n%s\nwant\n%s", verdict, gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default),
					gopacket.NewPacket(want, layers.LayerTypeEthernet, gopacket.Default))
			}
		})
	}
	// SCTP the node itself sends, on its way out by an external device,
	// and its reply, whether it comes back by a pod device or from outside.
	host := netip.AddrPortFrom(node4, 40001)
	if v, out := progRunFrom(t, ns, d.objs.TcEgress, sctp(host, netip.MustParseAddrPort("10.96.0.38:3868")), 0); v != tcActOK ||
		string(out) != string(sctp(host, netip.MustParseAddrPort("10.244.1.38:3869"))) {
		t.Errorf("SCTP the node sends: verdict %d, not translated to the backend for traffic from the node", v)
	}
	hostReply, wantReply := sctp(netip.MustParseAddrPort("10.244.1.38:3869"), host), sctp(netip.MustParseAddrPort("10.96.0.38:3868"), host)
	for _, prog := range []*ebpf.Program{d.objs.TcPodIngress, d.objs.TcIngress} {
		if v, out := progRun(t, ns, prog, hostReply); v != tcActOK || string(out) != string(wantReply) {
			t.Errorf("%v: the reply to the node: verdict %d, source translated back %v", prog, v, string(out) == string(wantReply))
		}
	}

	// A flow from outside to the node port, whose backend is local.
	client := netip.MustParseAddrPort("203.0.113.50:40000")
	if v, _ := progRun(t, ns, d.objs.TcIngress, sctp(client, netip.AddrPortFrom(node4, 30868))); v != tcActOK {
		t.Fatalf("flow from outside: verdict %d", v)
	}
	podReply, outsideReply := sctp(netip.MustParseAddrPort("10.244.1.38:3869"), pod), sctp(netip.MustParseAddrPort("10.244.2.38:3869"), client)
	for _, c := range []struct {
		name    string
		prog    *ebpf.Program
		in, out []byte
	}{
		{"reply to the pod translated", d.objs.TcPodEgress, podReply, sctp(netip.MustParseAddrPort("10.96.0.38:3868"), pod)},
		{"reply to outside left to the external devices", d.objs.TcPodEgress, outsideReply, nil},
		{"reply to outside translated by them", d.objs.TcEgress, outsideReply, sctp(netip.AddrPortFrom(node4, 30868), client)},
		{"reply to the pod left to the pod devices", d.objs.TcEgress, podReply, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			want := c.out
			if want == nil {
				want = c.in
			}
			verdict, out := progRun(t, ns, c.prog, c.in)
			if verdict != tcActOK || string(out) != string(want) {
				t.Errorf("verdict %d, got\n%s\nwant\n%s", verdict, gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default),
					gopacket.NewPacket(want, layers.LayerTypeEthernet, gopacket.Default))
			}
		})
	}
}

var (
	macA = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	macB = net.HardwareAddr{2, 0, 0, 0, 0, 2}
)

// frame serializes a packet from src to dst with correct checksums.
func frame(src, dst netip.AddrPort, l4 gopacket.SerializableLayer, setNet func(gopacket.NetworkLayer) error) []byte {
	eth := &layers.Ethernet{SrcMAC: macA, DstMAC: macB}
	proto := layers.IPProtocolTCP
	switch l4.LayerType() {
	case layers.LayerTypeUDP:
		proto = layers.IPProtocolUDP
	case layers.LayerTypeSCTP:
		proto = layers.IPProtocolSCTP
	}
	var ip gopacket.SerializableLayer
	var nl gopacket.NetworkLayer
	if src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		v4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		ip, nl = v4, v4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		v6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		ip, nl = v6, v6
	}
	if err := setNet(nl); err != nil {
		panic(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, l4, gopacket.Payload("hello")); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func tcp(src, dst netip.AddrPort, syn, ack bool) []byte {
	l4 := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), SYN: syn, ACK: ack, Seq: 1, Window: 512}
	return frame(src, dst, l4, l4.SetNetworkLayerForChecksum)
}

func tcpSYN(src, dst netip.AddrPort) []byte    { return tcp(src, dst, true, false) }
func tcpSYNACK(src, dst netip.AddrPort) []byte { return tcp(src, dst, true, true) }

// sctp is an SCTP packet whose CRC32c gopacket computes.
func sctp(src, dst netip.AddrPort) []byte {
	l4 := &layers.SCTP{SrcPort: layers.SCTPPort(src.Port()), DstPort: layers.SCTPPort(dst.Port()), VerificationTag: 0x5b0c}
	return frame(src, dst, l4, func(gopacket.NetworkLayer) error { return nil })
}

func udp(src, dst netip.AddrPort) []byte {
	l4 := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	return frame(src, dst, l4, l4.SetNetworkLayerForChecksum)
}

// checkPortUnreachable checks that out is an ICMP port unreachable from
// the service address in back to its source, quoting it.
func checkPortUnreachable(t *testing.T, in, out []byte) {
	t.Helper()
	req := gopacket.NewPacket(in, layers.LayerTypeEthernet, gopacket.Default)
	resp := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	reqNet, respNet := req.NetworkLayer(), resp.NetworkLayer()
	if reqNet == nil || respNet == nil {
		t.Fatalf("not IP: %s", resp)
	}
	if respNet.NetworkFlow() != reqNet.NetworkFlow().Reverse() {
		t.Errorf("answer %s, want %s", respNet.NetworkFlow(), reqNet.NetworkFlow().Reverse())
	}
	eth := resp.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if eth.SrcMAC.String() != macB.String() || eth.DstMAC.String() != macA.String() {
		t.Errorf("MACs not swapped: %s -> %s", eth.SrcMAC, eth.DstMAC)
	}
	if l := resp.Layer(layers.LayerTypeICMPv4); l != nil {
		icmp := l.(*layers.ICMPv4)
		if icmp.TypeCode != layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort) {
			t.Errorf("ICMP %s, want port unreachable", icmp.TypeCode)
		}
		checkResum(t, resp)
		return
	}
	if l := resp.Layer(layers.LayerTypeICMPv6); l != nil {
		icmp := l.(*layers.ICMPv6)
		if icmp.TypeCode != layers.CreateICMPv6TypeCode(layers.ICMPv6TypeDestinationUnreachable, layers.ICMPv6CodePortUnreachable) {
			t.Errorf("ICMPv6 %s, want port unreachable", icmp.TypeCode)
		}
		checkResum(t, resp)
		return
	}
	t.Errorf("no ICMP answer: %s", resp)
}

// checkResum serializes the decoded packet again with checksums computed
// and compares: the program's checksums must be the ones gopacket computes.
func checkResum(t *testing.T, p gopacket.Packet) {
	t.Helper()
	var ls []gopacket.SerializableLayer
	for _, l := range p.Layers() {
		switch l := l.(type) {
		case *layers.ICMPv6:
			l.SetNetworkLayerForChecksum(p.NetworkLayer())
			ls = append(ls, l)
		case gopacket.SerializableLayer:
			ls = append(ls, l)
		default:
			ls = append(ls, gopacket.Payload(l.LayerContents()))
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	if string(buf.Bytes()) != string(p.Data()) {
		t.Errorf("checksums differ from a fresh computation:\ngot  %x\nwant %x", p.Data(), buf.Bytes())
	}
}

// TestRetransmittedSYNKeepsItsBackend checks the connection table of
// traffic from outside: a SYN retransmitted before the handshake completes
// keeps the backend its first copy got, even after the service changed,
// while a SYN on a tuple whose connection went on (the client sent ACKs) is
// a new connection and is balanced afresh.
func TestRetransmittedSYNKeepsItsBackend(t *testing.T) {
	node := netip.MustParseAddr("192.168.0.1")
	ctx, d, ns := progRunDatapath(t, node)
	a, bb := netip.MustParseAddrPort("10.244.1.5:8080"), netip.MustParseAddrPort("10.244.1.6:8080")
	program := func(eps ...netip.AddrPort) {
		t.Helper()
		s := &datapath.Service{Key: "default/web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80, NodePort: 30080,
				Internal: datapath.Backends{NoEndpoints: datapath.Reject}}}}
		for _, ep := range eps {
			s.Ports[0].Internal.Endpoints = append(s.Ports[0].Internal.Endpoints, datapath.Endpoint{Addr: ep})
		}
		if err := d.Apply(ctx, []*datapath.Service{s}, nil); err != nil {
			t.Fatal(err)
		}
	}
	nodePort := netip.AddrPortFrom(node, 30080)
	// send runs tc_ingress on a packet and returns where it was sent.
	send := func(pkt []byte) netip.AddrPort {
		t.Helper()
		out := make([]byte, len(pkt)+256)
		opts := &ebpf.RunOptions{Data: pkt, DataOut: out}
		if err := netns.Do(ns.Path(), func() error { _, err := d.objs.TcIngress.Run(opts); return err }); err != nil {
			t.Fatal(err)
		}
		p := gopacket.NewPacket(opts.DataOut, layers.LayerTypeEthernet, gopacket.Default)
		ip, tcp := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4), p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		dst, _ := netip.AddrFromSlice(ip.DstIP)
		return netip.AddrPortFrom(dst, uint16(tcp.DstPort))
	}
	ack := func(src, dst netip.AddrPort) []byte { return tcp(src, dst, false, true) }

	// A client port whose fresh connection goes to b once both backends
	// are there.
	program(a, bb)
	var client netip.AddrPort
	for port := uint16(40000); port < 40100 && !client.IsValid(); port++ {
		c := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.50"), port)
		if send(tcpSYN(c, nodePort)) == bb {
			client = c
		}
	}
	if !client.IsValid() {
		t.Fatal("no client port of 100 was balanced to the second backend")
	}
	if err := clearMap[lbTuple, lbCtVal](d.objs.Conntrack); err != nil {
		t.Fatal(err)
	}

	program(a)
	if got := send(tcpSYN(client, nodePort)); got != a {
		t.Fatalf("first SYN went to %s, want %s, the only backend", got, a)
	}
	program(a, bb)
	if got := send(tcpSYN(client, nodePort)); got != a {
		t.Errorf("retransmitted SYN went to %s, want %s, where its first copy went", got, a)
	}
	if got := send(ack(client, nodePort)); got != a {
		t.Errorf("the handshake's ACK went to %s, want %s", got, a)
	}
	if got := send(tcpSYN(client, nodePort)); got != bb {
		t.Errorf("a new connection on the reused tuple went to %s, want %s (balanced afresh)", got, bb)
	}
}
