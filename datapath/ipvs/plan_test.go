package ipvs

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
)

func TestPlan(t *testing.T) {
	ep := func(s string, draining bool) datapath.Endpoint {
		return datapath.Endpoint{Addr: netip.MustParseAddrPort(s), Draining: draining}
	}
	a := netip.MustParseAddr
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
	internal4 := []dest{{netip.MustParseAddrPort("10.244.1.5:8080"), 0}, {netip.MustParseAddrPort("10.244.2.5:8080"), 1}}
	external := []dest{{netip.MustParseAddrPort("10.244.1.5:8080"), 1}}
	const timeout = 3 * 3600
	want := []virtual{
		{vkey{a("10.96.0.10"), datapath.TCP, 80}, timeout, internal4},
		{vkey{a("192.168.0.1"), datapath.TCP, 30080}, timeout, external},
		{vkey{a("198.51.100.10"), datapath.TCP, 80}, timeout, external},
		{vkey{a("203.0.113.7"), datapath.TCP, 80}, timeout, external},
		{vkey{a("fd00:96::10"), datapath.TCP, 80}, timeout, []dest{{netip.MustParseAddrPort("[fd00:244::5]:8080"), 1}}},
	}
	got := plan(svc, node)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("plan:\n got %v\nwant %v", got, want)
	}
	wantAddrs := []netip.Addr{a("10.96.0.10"), a("198.51.100.10"), a("203.0.113.7"), a("fd00:96::10")}
	if got := addresses(got, node); !reflect.DeepEqual(got, wantAddrs) {
		t.Errorf("addresses: got %v, want %v", got, wantAddrs)
	}
}
