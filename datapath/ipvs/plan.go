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

// vkey identifies a virtual server: an address, a protocol and a port.
type vkey struct {
	addr  netip.Addr
	proto datapath.Protocol
	port  uint16
}

func (k vkey) String() string {
	return fmt.Sprintf("%s %s", k.proto, netip.AddrPortFrom(k.addr, k.port))
}

// dest is one real server with its weight: 1 takes new connections, 0
// (a terminating endpoint) keeps only its existing ones.
type dest struct {
	addr   netip.AddrPort
	weight int
}

// virtual is one IPVS virtual server as the datapath wants it.
type virtual struct {
	key vkey
	// timeout is the ClientIP persistence in seconds; 0 means none.
	timeout uint32
	dests   []dest
}

func (v *virtual) equal(o *virtual) bool {
	return v.key == o.key && v.timeout == o.timeout && slices.Equal(v.dests, o.dests)
}

// plan returns the virtual servers of a service on a node with the given
// addresses, sorted by key: one per cluster IP, external IP and
// load-balancer IP and port, and one per node address and node port.
// Endpoints of the other address family are left out.
func plan(s *datapath.Service, node []netip.Addr) []virtual {
	var out []virtual
	timeout := uint32(s.AffinityTimeout.Seconds())
	add := func(a netip.Addr, p *datapath.Port, port uint16, b *datapath.Backends) {
		v := virtual{key: vkey{a, p.Protocol, port}, timeout: timeout}
		for _, ep := range b.Endpoints {
			if ep.Addr.Addr().Is4() != a.Is4() {
				continue
			}
			w := 1
			if ep.Draining {
				w = 0
			}
			v.dests = append(v.dests, dest{ep.Addr, w})
		}
		slices.SortFunc(v.dests, func(x, y dest) int { return x.addr.Compare(y.addr) })
		v.dests = slices.CompactFunc(v.dests, func(x, y dest) bool { return x.addr == y.addr })
		out = append(out, v)
	}
	for i := range s.Ports {
		p := &s.Ports[i]
		for _, a := range s.ClusterIPs {
			add(a, p, p.Port, &p.Internal)
		}
		for _, set := range [][]netip.Addr{s.ExternalIPs, s.LoadBalancerIPs} {
			for _, a := range set {
				add(a, p, p.Port, p.ExternalBackends())
			}
		}
		if p.NodePort != 0 {
			for _, a := range node {
				add(a, p, p.NodePort, p.ExternalBackends())
			}
		}
	}
	slices.SortFunc(out, func(x, y virtual) int { return compareKeys(x.key, y.key) })
	return out
}

func compareKeys(a, b vkey) int {
	return cmp.Or(a.addr.Compare(b.addr), cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port))
}

// addresses returns the service addresses a plan needs on the dummy
// device: every virtual server's address that is not a node address.
func addresses(vs []virtual, node []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, v := range vs {
		if !slices.Contains(node, v.key.addr) {
			out = append(out, v.key.addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
