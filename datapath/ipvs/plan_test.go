package ipvs

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
)

var (
	a  = netip.MustParseAddr
	ap = netip.MustParseAddrPort
)

func ep(s string, draining bool) datapath.Endpoint {
	return datapath.Endpoint{Addr: ap(s), Draining: draining}
}

func TestPlan(t *testing.T) {
	svc := &datapath.Service{
		Key:             "default/web",
		ClusterIPs:      []netip.Addr{a("10.96.0.10"), a("fd00:96::10")},
		ExternalIPs:     []netip.Addr{a("203.0.113.7")},
		LoadBalancerIPs: []netip.Addr{a("198.51.100.10")},
		AffinityTimeout: 3 * time.Hour,
		Ports: []datapath.Port{{Name: "http", Protocol: datapath.TCP, Port: 80, NodePort: 30080,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: []datapath.Endpoint{
				ep("10.244.2.5:8080", false), ep("10.244.1.5:8080", true), ep("[fd00:244::5]:8080", false), ep("10.244.2.5:8080", false)}},
			External: &datapath.Backends{NoEndpoints: datapath.Drop, Endpoints: []datapath.Endpoint{ep("10.244.1.5:8080", false)}},
		}},
	}
	node := []netip.Addr{a("192.168.0.1")}
	internal4 := []dest{{ap("10.244.1.5:8080"), 0}, {ap("10.244.2.5:8080"), 1}}
	external := []dest{{ap("10.244.1.5:8080"), 1}}
	// Traffic from the node to the external addresses reaches every
	// endpoint (ExternalFromNode is nil: the same as Internal).
	fromNode := &nodePath{dests: internal4}
	const timeout = 3 * 3600
	want := []virtual{
		{key: vkey{addr: a("10.96.0.10"), proto: datapath.TCP, port: 80}, timeout: timeout, dests: internal4},
		{key: vkey{addr: a("192.168.0.1"), proto: datapath.TCP, port: 30080}, timeout: timeout, dests: external, fromNode: fromNode},
		{key: vkey{addr: a("198.51.100.10"), proto: datapath.TCP, port: 80}, timeout: timeout, dests: external, fromNode: fromNode},
		{key: vkey{addr: a("203.0.113.7"), proto: datapath.TCP, port: 80}, timeout: timeout, dests: external, fromNode: fromNode},
		{key: vkey{addr: a("fd00:96::10"), proto: datapath.TCP, port: 80}, timeout: timeout, dests: []dest{{ap("[fd00:244::5]:8080"), 1}}},
	}
	got := plan(svc, node)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("plan:\n got %+v\nwant %+v", got, want)
	}
	wantAddrs := []netip.Addr{a("10.96.0.10"), a("198.51.100.10"), a("203.0.113.7"), a("fd00:96::10")}
	if got := addresses(got, node); !reflect.DeepEqual(got, wantAddrs) {
		t.Errorf("addresses: got %v, want %v", got, wantAddrs)
	}
}

// TestPlanPolicies covers what the nftables table adds to IPVS: drops for
// a Local policy without local endpoints, source ranges, and the way of
// traffic from the node.
func TestPlanPolicies(t *testing.T) {
	remote := []datapath.Endpoint{ep("10.244.2.5:8080", false), ep("10.244.3.5:8080", false)}
	all := []dest{{ap("10.244.2.5:8080"), 1}, {ap("10.244.3.5:8080"), 1}}
	lb := vkey{addr: a("198.51.100.10"), proto: datapath.TCP, port: 80}
	lb6 := vkey{addr: a("2001:db8:51::10"), proto: datapath.TCP, port: 80}
	cluster := vkey{addr: a("10.96.0.10"), proto: datapath.TCP, port: 80}
	for _, tc := range []struct {
		name string
		svc  datapath.Service
		want []virtual
	}{{
		name: "external Local without local endpoints drops from outside, reaches every endpoint from the node",
		svc: datapath.Service{LoadBalancerIPs: []netip.Addr{lb.addr}, Ports: []datapath.Port{{Protocol: datapath.TCP, Port: 80,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: remote},
			External: &datapath.Backends{NoEndpoints: datapath.Drop}}}},
		want: []virtual{{key: lb, drop: true, fromNode: &nodePath{dests: all}}},
	}, {
		name: "internal Local without local endpoints drops, from anywhere",
		svc: datapath.Service{ClusterIPs: []netip.Addr{cluster.addr}, Ports: []datapath.Port{{Protocol: datapath.TCP, Port: 80,
			Internal: datapath.Backends{NoEndpoints: datapath.Drop}}}},
		want: []virtual{{key: cluster, drop: true}},
	}, {
		name: "only terminating endpoints: drop new connections, keep the real servers",
		svc: datapath.Service{ClusterIPs: []netip.Addr{cluster.addr}, Ports: []datapath.Port{{Protocol: datapath.TCP, Port: 80,
			Internal: datapath.Backends{NoEndpoints: datapath.Drop, Endpoints: []datapath.Endpoint{ep("10.244.1.5:8080", true)}}}}},
		want: []virtual{{key: cluster, drop: true, dests: []dest{{ap("10.244.1.5:8080"), 0}}}},
	}, {
		name: "no endpoints anywhere: IPVS refuses, no drop",
		svc: datapath.Service{ClusterIPs: []netip.Addr{cluster.addr}, Ports: []datapath.Port{{Protocol: datapath.TCP, Port: 80,
			Internal: datapath.Backends{NoEndpoints: datapath.Reject}}}},
		want: []virtual{{key: cluster}},
	}, {
		name: "source ranges apply to load-balancer addresses only, per family",
		svc: datapath.Service{ClusterIPs: []netip.Addr{cluster.addr}, LoadBalancerIPs: []netip.Addr{lb.addr, lb6.addr},
			SourceRanges: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("203.0.113.0/24")},
			Ports:        []datapath.Port{{Protocol: datapath.TCP, Port: 80, Internal: datapath.Backends{NoEndpoints: datapath.Reject, Endpoints: remote}}}},
		want: []virtual{
			{key: cluster, dests: all},
			{key: lb, dests: all, firewall: true, allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("203.0.113.0/24")}},
			// No range of its family: nobody may connect.
			{key: lb6, firewall: true},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			tc.svc.Key = "default/web"
			if got := plan(&tc.svc, nil); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("plan:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestAssignMarks(t *testing.T) {
	k := func(port uint16) vkey { return vkey{addr: a("198.51.100.10"), proto: datapath.TCP, port: port} }
	local := func(ports ...uint16) []virtual {
		var out []virtual
		for _, p := range ports {
			out = append(out, virtual{key: k(p), fromNode: &nodePath{}})
		}
		return out
	}
	marks, err := assignMarks(nil, map[string][]virtual{"a/x": local(80, 81), "a/y": {{key: k(82)}}})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[vkey]uint32{k(80): markBase + 1, k(81): markBase + 2}; !reflect.DeepEqual(marks, want) {
		t.Fatalf("marks %v, want %v", marks, want)
	}
	// A frontend keeps its mark while others come and go; a freed mark is
	// taken again.
	marks, err = assignMarks(marks, map[string][]virtual{"a/x": local(79, 81)})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[vkey]uint32{k(79): markBase + 1, k(81): markBase + 2}; !reflect.DeepEqual(marks, want) {
		t.Fatalf("marks %v, want %v", marks, want)
	}
	for _, m := range marks {
		if m&masqMark != 0 {
			t.Errorf("mark %#x sets the masquerade bit", m)
		}
	}
	many := make([]uint16, maxMarks+1)
	for i := range many {
		many[i] = uint16(1000 + i)
	}
	if _, err := assignMarks(nil, map[string][]virtual{"a/x": local(many...)}); !errors.Is(err, datapath.ErrFull) {
		t.Errorf("%d frontends: %v, want ErrFull", len(many), err)
	}
	if _, err := assignMarks(nil, map[string][]virtual{"a/x": local(many[1:]...)}); err != nil {
		t.Errorf("%d frontends: %v", len(many)-1, err)
	}
}

func TestServers(t *testing.T) {
	lb := vkey{addr: a("2001:db8:51::10"), proto: datapath.TCP, port: 80}
	d := []dest{{ap("[fd00:244:2::5]:8080"), 1}}
	vs := []virtual{{key: lb, timeout: 60, drop: true, fromNode: &nodePath{dests: d}}}
	want := []virtual{{key: lb, timeout: 60}, {key: vkey{addr: netip.IPv6Unspecified(), mark: markBase + 7}, timeout: 60, dests: d}}
	if got := servers(vs, map[vkey]uint32{lb: markBase + 7}); !reflect.DeepEqual(got, want) {
		t.Errorf("servers:\n got %+v\nwant %+v", got, want)
	}
}
