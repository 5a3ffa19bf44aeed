package ipvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/spoke-proxy/spoke/datapath"
)

// Linux's IPVS constants (include/uapi/linux/ip_vs.h).
const (
	svcFlagPersistent = 0x0001 // IP_VS_SVC_F_PERSISTENT
	connFlagMasq      = 0x0000 // IP_VS_CONN_F_MASQ
	scheduler         = "rr"
)

// vkey identifies a virtual server: an address, a protocol and a port, or,
// for a firewall-mark virtual server, a mark and the address family (addr
// is then the family's unspecified address).
type vkey struct {
	addr  netip.Addr
	proto datapath.Protocol
	port  uint16
	mark  uint32
}

func (k vkey) String() string {
	if k.mark != 0 {
		return fmt.Sprintf("fwmark %#x %s", k.mark, family4or6(k.addr))
	}
	return fmt.Sprintf("%s %s", k.proto, netip.AddrPortFrom(k.addr, k.port))
}

func family4or6(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// markKey is the key of the firewall-mark virtual server with the given
// mark, in the address family of a.
func markKey(a netip.Addr, mark uint32) vkey {
	zero := netip.IPv4Unspecified()
	if a.Is6() {
		zero = netip.IPv6Unspecified()
	}
	return vkey{addr: zero, mark: mark}
}

// dest is one real server with its weight: 1 takes new connections, 0
// (a terminating endpoint) keeps only its existing ones.
type dest struct {
	addr   netip.AddrPort
	weight int
}

// virtual is one IPVS virtual server as the datapath wants it, with what
// the nftables table does in front of it.
type virtual struct {
	key vkey
	// timeout is the ClientIP persistence in seconds; 0 means none.
	timeout uint32
	dests   []dest
	// drop: new connections are dropped, not refused (a Local traffic
	// policy without a local endpoint). IPVS refuses what it cannot
	// schedule, so the table drops them before IPVS sees them. When
	// fromNode is set, drop is for traffic from outside the node only.
	drop bool
	// firewall: only sources in allow may open connections
	// (loadBalancerSourceRanges on a load-balancer address); allow holds
	// the ranges of the address's family and may be empty.
	firewall bool
	allow    []netip.Prefix
	// fromNode, when set, is what traffic that starts on the node gets
	// instead (kube-proxy's short-circuit for external addresses under a
	// Local policy): a firewall-mark virtual server that the table marks
	// such traffic for.
	fromNode *nodePath
}

// nodePath is the way of traffic from the node to an external address when
// it differs from the way of traffic from outside.
type nodePath struct {
	dests []dest
	drop  bool
}

// sameServer reports whether two virtual servers are the same kernel
// object: key, persistence and real servers.
func (v *virtual) sameServer(o *virtual) bool {
	return v.key == o.key && v.timeout == o.timeout && slices.Equal(v.dests, o.dests)
}

// plan returns the virtual servers of a service on a node with the given
// addresses, sorted by key: one per cluster IP, external IP and
// load-balancer IP and port, and one per node address and node port.
// Endpoints of the other address family are left out.
func plan(s *datapath.Service, node []netip.Addr) []virtual {
	var out []virtual
	timeout := uint32(s.AffinityTimeout.Seconds())
	add := func(a netip.Addr, p *datapath.Port, port uint16, b, fromNode *datapath.Backends, lb bool) {
		v := virtual{key: vkey{addr: a, proto: p.Protocol, port: port}, timeout: timeout}
		v.dests, v.drop = dests(a, b)
		if fromNode != nil {
			nd, ndrop := dests(a, fromNode)
			if !slices.Equal(nd, v.dests) || ndrop != v.drop {
				v.fromNode = &nodePath{dests: nd, drop: ndrop}
			}
		}
		if lb && len(s.SourceRanges) > 0 {
			v.firewall = true
			for _, r := range s.SourceRanges {
				if r.Addr().Is4() == a.Is4() {
					v.allow = append(v.allow, r)
				}
			}
			slices.SortFunc(v.allow, comparePrefixes)
			v.allow = slices.Compact(v.allow)
		}
		out = append(out, v)
	}
	for i := range s.Ports {
		p := &s.Ports[i]
		for _, a := range s.ClusterIPs {
			add(a, p, p.Port, &p.Internal, nil, false)
		}
		for _, a := range s.ExternalIPs {
			add(a, p, p.Port, p.ExternalBackends(), p.ExternalFromNodeBackends(), false)
		}
		for _, a := range s.LoadBalancerIPs {
			add(a, p, p.Port, p.ExternalBackends(), p.ExternalFromNodeBackends(), true)
		}
		if p.NodePort != 0 {
			for _, a := range node {
				add(a, p, p.NodePort, p.ExternalBackends(), p.ExternalFromNodeBackends(), false)
			}
		}
	}
	slices.SortFunc(out, func(x, y virtual) int { return compareKeys(x.key, y.key) })
	return out
}

// dests returns the real servers of a's family for backends, and whether
// new connections are to be dropped: none takes new connections and the
// backends say Drop.
func dests(a netip.Addr, b *datapath.Backends) ([]dest, bool) {
	var out []dest
	active := false
	for _, ep := range b.Endpoints {
		if ep.Addr.Addr().Is4() != a.Is4() {
			continue
		}
		w := 1
		if ep.Draining {
			w = 0
		}
		active = active || w > 0
		out = append(out, dest{ep.Addr, w})
	}
	slices.SortFunc(out, func(x, y dest) int { return x.addr.Compare(y.addr) })
	out = slices.CompactFunc(out, func(x, y dest) bool { return x.addr == y.addr })
	return out, !active && b.NoEndpoints == datapath.Drop
}

func compareKeys(a, b vkey) int {
	return cmp.Or(a.addr.Compare(b.addr), cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port), cmp.Compare(a.mark, b.mark))
}

func comparePrefixes(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// addresses returns the service addresses a plan needs on the dummy
// device: every virtual server's address that is not a node address.
func addresses(vs []virtual, node []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, v := range vs {
		if v.key.mark == 0 && !slices.Contains(node, v.key.addr) {
			out = append(out, v.key.addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
