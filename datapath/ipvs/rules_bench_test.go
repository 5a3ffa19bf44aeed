package ipvs

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/testnet"
)

// scalePlans returns the plans of n services: a cluster IP, a node port and
// two endpoints each, and every tenth a load-balancer address with source
// ranges.
func scalePlans(n int, node []netip.Addr) map[string][]virtual {
	plans := map[string][]virtual{}
	for i := range n {
		hi, lo := byte(i>>8), byte(i)
		s := &datapath.Service{Key: fmt.Sprintf("default/s%d", i),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, hi, lo})},
			Ports: []datapath.Port{{Protocol: datapath.TCP, Port: 80, NodePort: uint16(30000 + i),
				Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{
					{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, hi, lo}), 8080)},
					{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 245, hi, lo}), 8080)}}}}},
		}
		if i%10 == 0 {
			s.LoadBalancerIPs = []netip.Addr{netip.AddrFrom4([4]byte{198, 51, hi, lo})}
			s.SourceRanges = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
		}
		plans[s.Key] = plan(s, node)
	}
	return plans
}

// TestTableAtScale replaces the table with 3,000 services' ruleset, more
// than one netlink attribute and the default socket buffer hold, and reads
// it back.
func TestTableAtScale(t *testing.T) {
	ns := testnet.NetNS(t)
	tb := &table{netns: ns.Path()}
	node := []netip.Addr{a("192.168.0.1")}
	replaceAndCheck(t, tb, buildRuleset(scalePlans(3000, node), nil, node, []string{"eth0"}))
}

// BenchmarkReplaceTable measures what an Apply that touches the table
// costs at scale: building the ruleset of 5,000 services and replacing
// the table with it, in a real kernel.
func BenchmarkReplaceTable(b *testing.B) {
	ns := testnet.NetNS(b)
	tb := &table{netns: ns.Path()}
	node := []netip.Addr{a("192.168.0.1")}
	plans := scalePlans(5000, node)
	for b.Loop() {
		if err := tb.replace(buildRuleset(plans, nil, node, []string{"eth0"})); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildRuleset is the part of BenchmarkReplaceTable that needs
// no kernel.
func BenchmarkBuildRuleset(b *testing.B) {
	node := []netip.Addr{a("192.168.0.1")}
	plans := scalePlans(5000, node)
	for b.Loop() {
		buildRuleset(plans, nil, node, []string{"eth0"}).elements()
	}
}
