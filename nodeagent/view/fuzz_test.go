package view_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/nodeagent/view"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

func decodeSeeds() []*spokev1.Resource {
	backends := func(drop bool, eps ...*spokev1.Endpoint) *spokev1.Backends {
		b := &spokev1.Backends{Endpoints: eps, NoEndpoints: spokev1.NoEndpoints_NO_ENDPOINTS_REJECT}
		if drop {
			b.NoEndpoints = spokev1.NoEndpoints_NO_ENDPOINTS_DROP
		}
		return b
	}
	full := &spokev1.Service{
		Namespace: "default", Name: "web",
		ClusterIps:                    []string{"10.96.0.10", "fd00:96::10"},
		ExternalIps:                   []string{"192.0.2.10"},
		LoadBalancerIps:               []string{"198.51.100.10", "2001:db8:51::10"},
		LoadBalancerSourceRanges:      []string{"203.0.113.0/24", "2001:db8:99::/48"},
		SessionAffinityTimeoutSeconds: 10800,
		HealthCheckNodePort:           32000,
		Ports: []*spokev1.ServicePort{{
			Name: "http", Protocol: spokev1.Protocol_PROTOCOL_TCP, Port: 80, NodePort: 30080,
			Internal:         backends(true, &spokev1.Endpoint{Ip: "10.244.1.5", Port: 8080}),
			External:         backends(true),
			ExternalFromNode: backends(false, &spokev1.Endpoint{Ip: "10.244.1.5", Port: 8080}, &spokev1.Endpoint{Ip: "fd00:244::6", Port: 8080, Draining: true}),
		}, {
			Name: "dns", Protocol: spokev1.Protocol_PROTOCOL_UDP, Port: 53,
			Internal: backends(false, &spokev1.Endpoint{Ip: "10.244.2.53", Port: 5353}),
		}},
	}
	return []*spokev1.Resource{
		{Name: "default/web", Kind: &spokev1.Resource_Service{Service: full}},
		{Name: "default/web", Kind: &spokev1.Resource_Service{Service: &spokev1.Service{Namespace: "default", Name: "web", ClusterIps: []string{"010.96.0.10"}}}},
		{Name: "other/web", Kind: &spokev1.Resource_Service{Service: full}},
		{Name: spokev1.NodeResourceName, Kind: &spokev1.Resource_Node{Node: &spokev1.Node{Name: "node-a", Zone: "zone-1", Addresses: []string{"192.168.0.1", "fd00:192::1"}}}},
		{Name: spokev1.NodeResourceName, Kind: &spokev1.Resource_Node{Node: &spokev1.Node{Name: "node-a", Addresses: []string{"::ffff:192.168.0.1"}}}},
	}
}

// FuzzDecode checks that the decoder never panics on any bytes, and that
// whatever it accepts is a well-formed, bounded service or node that
// names itself as the resource does.
func FuzzDecode(f *testing.F) {
	for _, r := range decodeSeeds() {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r spokev1.Resource
		if err := proto.Unmarshal(data, &r); err != nil {
			return
		}
		switch r.GetKind().(type) {
		case *spokev1.Resource_Service:
			s, err := view.Service(&r)
			if err != nil {
				return
			}
			checkService(t, &r, s)
		case *spokev1.Resource_Node:
			n, err := view.Node(&r)
			if err != nil {
				return
			}
			if len(n.Addresses) > view.MaxAddresses {
				t.Fatalf("node with %d addresses accepted", len(n.Addresses))
			}
			for _, a := range n.Addresses {
				if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
					t.Fatalf("node address %v accepted", a)
				}
			}
		default:
			if _, err := view.Service(&r); err == nil {
				t.Fatal("a resource without a service decoded as one")
			}
		}
	})
}

func checkService(t *testing.T, r *spokev1.Resource, s *datapath.Service) {
	t.Helper()
	if err := s.Validate(); err != nil {
		t.Fatalf("accepted service fails validation: %v", err)
	}
	if s.Key != r.GetName() || strings.Count(s.Key, "/") != 1 {
		t.Fatalf("service %q accepted as resource %q", s.Key, r.GetName())
	}
	if len(s.ClusterIPs) > view.MaxAddresses || len(s.ExternalIPs) > view.MaxAddresses ||
		len(s.LoadBalancerIPs) > view.MaxAddresses || len(s.SourceRanges) > view.MaxAddresses || len(s.Ports) > view.MaxPorts {
		t.Fatalf("service beyond the limits accepted: %d/%d/%d/%d addresses, %d ports",
			len(s.ClusterIPs), len(s.ExternalIPs), len(s.LoadBalancerIPs), len(s.SourceRanges), len(s.Ports))
	}
	for _, p := range s.Ports {
		for _, b := range []*datapath.Backends{&p.Internal, p.External, p.ExternalFromNode} {
			if b != nil && len(b.Endpoints) > view.MaxEndpoints {
				t.Fatalf("port %q with %d endpoints accepted", p.Name, len(b.Endpoints))
			}
		}
	}
}
