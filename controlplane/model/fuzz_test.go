package model_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/nodeagent/view"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// fuzzInput is what FuzzCompute decodes its bytes into.
type fuzzInput struct {
	Service   *corev1.Service              `json:"service"`
	Slices    []*discoveryv1.EndpointSlice `json:"slices"`
	Zones     map[string]string            `json:"zones"`
	ProxyName string                       `json:"proxyName"`
}

func fuzzSeeds() []fuzzInput {
	dualSlices := []*discoveryv1.EndpointSlice{
		endpointSlice("web-4", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", ready, forZones("zone-1"), forNodes("node-a")),
			endpoint("10.244.2.5", "node-b", servingTerminating, forZones("zone-2")),
			endpoint("10.244.2.6", "node-b", terminating),
			endpoint("010.244.2.7", "node-b", ready)),
		endpointSlice("web-6", "web", v6, httpTCP,
			endpoint("fd00:244::5", "node-a", ready, forZones("zone-1")),
			endpoint("fd00:244::6", "node-c", notReady)),
	}
	return []fuzzInput{{
		Service: service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		Slices:  []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP, endpoint("10.244.1.5", "node-a", ready))},
	}, {
		Service: service("web", dual, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 30080),
			port("dns", corev1.ProtocolUDP, 53, 30053), ingress("203.0.113.7", ""), ingress("2001:db8::7", corev1.LoadBalancerIPModeProxy),
			sourceRanges("192.0.2.0/24", "bad"), externalLocal(32000), internalLocal, affinity(ptr.To[int32](60)),
			externalIPs("198.51.100.1", "2001:db8::1")),
		Slices: dualSlices,
		Zones:  map[string]string{"node-a": "zone-1", "node-b": "zone-2"},
	}, {
		Service: service("web", dual, port("http", corev1.ProtocolTCP, 80, 0),
			func(s *corev1.Service) {
				s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferSameNode)
			}),
		Slices: dualSlices,
		Zones:  map[string]string{"node-a": "zone-1"},
	}, {
		Service:   service("web", []string{"10.96.0.010"}, port("http", "ICMP", 80, 0), label(model.ServiceProxyNameLabel, "spoke")),
		ProxyName: "spoke",
	}}
}

// FuzzCompute checks, for any service and slices: no panic, the inputs are
// left as they were, the output is the same when computed twice, it is
// bounded by the input, and the agent's decoder accepts every view.
func FuzzCompute(f *testing.F) {
	for _, s := range fuzzSeeds() {
		b, err := json.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var in fuzzInput
		if err := json.Unmarshal(data, &in); err != nil {
			return
		}
		before, err := json.Marshal(in)
		if err != nil {
			return
		}
		topo := model.Topology{Zones: in.Zones}
		opts := model.Options{ProxyName: in.ProxyName}
		views, errs := model.Compute(in.Service, in.Slices, topo, opts)
		again, errsAgain := model.Compute(in.Service, in.Slices, topo, opts)

		if after, _ := json.Marshal(in); !bytes.Equal(before, after) {
			t.Fatalf("Compute changed its input")
		}
		if fmt.Sprint(errs) != fmt.Sprint(errsAgain) {
			t.Fatalf("errors differ between runs:\n%v\n%v", errs, errsAgain)
		}
		if !sameViews(views, again) {
			t.Fatalf("views differ between runs:\n%s\n%s", render(views), render(again))
		}
		checkBounds(t, &in, views)
		for _, svc := range allViews(views) {
			r := &spokev1.Resource{Name: svc.Namespace + "/" + svc.Name, Kind: &spokev1.Resource_Service{Service: svc}}
			if _, err := view.Service(r); err != nil {
				t.Fatalf("the agent rejects a computed view: %v\n%s", err, render(views))
			}
		}
	})
}

func allViews(v model.Views) []*spokev1.Service {
	var out []*spokev1.Service
	if v.Default != nil {
		out = append(out, v.Default)
	}
	for _, s := range v.ByZone {
		out = append(out, s)
	}
	for _, s := range v.ByNode {
		out = append(out, s)
	}
	return out
}

func sameViews(a, b model.Views) bool {
	if !proto.Equal(a.Default, b.Default) || len(a.ByZone) != len(b.ByZone) || len(a.ByNode) != len(b.ByNode) {
		return false
	}
	for z, s := range a.ByZone {
		if !proto.Equal(s, b.ByZone[z]) {
			return false
		}
	}
	for n, s := range a.ByNode {
		if !proto.Equal(s, b.ByNode[n]) {
			return false
		}
	}
	return true
}

// checkBounds checks that the output grows with the input only: one view
// per hinted zone and per named node at most, no more ports than the
// service has, and no more endpoints per port than the slices list.
func checkBounds(t *testing.T, in *fuzzInput, v model.Views) {
	t.Helper()
	if v.Empty() {
		return
	}
	zones, nodes, endpoints := map[string]bool{}, map[string]bool{}, 0
	for _, es := range in.Slices {
		if es == nil {
			continue
		}
		endpoints += len(es.Endpoints)
		for _, e := range es.Endpoints {
			if e.NodeName != nil {
				nodes[*e.NodeName] = true
			}
			if e.Hints != nil {
				for _, z := range e.Hints.ForZones {
					zones[z.Name] = true
				}
				for _, n := range e.Hints.ForNodes {
					nodes[n.Name] = true
				}
			}
		}
	}
	if len(v.ByZone) > len(zones) || len(v.ByNode) > len(nodes) {
		t.Fatalf("%d zone and %d node views for %d zones and %d nodes named in the input", len(v.ByZone), len(v.ByNode), len(zones), len(nodes))
	}
	for _, s := range allViews(v) {
		if len(s.Ports) > len(in.Service.Spec.Ports) {
			t.Fatalf("%d ports from a service with %d", len(s.Ports), len(in.Service.Spec.Ports))
		}
		for _, p := range s.Ports {
			for _, b := range []*spokev1.Backends{p.Internal, p.External, p.ExternalFromNode} {
				if n := len(b.GetEndpoints()); n > endpoints || n > model.MaxEndpoints {
					t.Fatalf("%d endpoints in one set from %d in the input", n, endpoints)
				}
			}
		}
	}
}
