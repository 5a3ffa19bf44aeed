package model_test

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/spoke-proxy/spoke/controlplane/model"
)

// TestComputeSharesViewsAcrossNodes checks that a Local service in a
// cluster of 5,000 nodes gets one view per hosting node and one shared by
// every other node, whatever the cluster's size.
func TestComputeSharesViewsAcrossNodes(t *testing.T) {
	topo := model.Topology{Zones: map[string]string{}}
	for i := range 5000 {
		topo.Zones[fmt.Sprintf("node-%d", i)] = fmt.Sprintf("zone-%d", i%3)
	}
	svc := service("web", ip4, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 30080),
		ingress("203.0.113.7", ""), externalLocal(32000))
	es := endpointSlice("web-1", "web", v4, httpTCP,
		endpoint("10.244.0.5", "node-0", ready), endpoint("10.244.1.5", "node-1", ready), endpoint("10.244.1.6", "node-1", ready),
		endpoint("10.244.7.5", "node-7", notReady))
	views, errs := model.Compute(svc, []*discoveryv1.EndpointSlice{es}, topo, model.Options{})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if got := slices.Sorted(maps.Keys(views.ByNode)); !slices.Equal(got, []string{"node-0", "node-1"}) {
		t.Fatalf("node views for %v, want node-0 and node-1 (the nodes with usable endpoints)", got)
	}
	if len(views.ByZone) != 0 {
		t.Fatalf("zone views %v without topology hints", views.ByZone)
	}
	for _, n := range []string{"node-2", "node-7", "node-4999"} {
		if views.For(n, topo.Zones[n]) != views.Default {
			t.Errorf("%s does not share the default view", n)
		}
	}
	if views.ByNode["node-0"].Ports[0].Internal != views.ByNode["node-1"].Ports[0].Internal {
		t.Error("cluster-wide backends are not shared between node views")
	}
}

// TestComputeIgnoresInputOrder checks that the order of slices and of
// endpoints in them does not change the views.
func TestComputeIgnoresInputOrder(t *testing.T) {
	svc := service("web", dual, port("http", corev1.ProtocolTCP, 80, 0), internalLocal)
	a := endpointSlice("web-a", "web", v4, httpTCP,
		endpoint("10.244.1.5", "node-a", ready, forZones("zone-1")), endpoint("10.244.2.5", "node-b", servingTerminating),
		endpoint("10.244.2.6", "node-b", ready, forZones("zone-2")))
	b := endpointSlice("web-b", "web", v4, []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 9090)},
		endpoint("10.244.2.5", "node-b", ready), endpoint("10.244.3.5", "node-c", terminating))
	c := endpointSlice("web-c", "web", v6, httpTCP, endpoint("fd00::5", "node-a", ready), endpoint("fd00::4", "node-c", ready))
	want, _ := model.Compute(svc, []*discoveryv1.EndpointSlice{a, b, c}, model.Topology{Zones: zones}, model.Options{})

	ra, rb, rc := a.DeepCopy(), b.DeepCopy(), c.DeepCopy()
	for _, es := range []*discoveryv1.EndpointSlice{ra, rb, rc} {
		slices.Reverse(es.Endpoints)
	}
	got, _ := model.Compute(svc, []*discoveryv1.EndpointSlice{rc, rb, ra}, model.Topology{Zones: zones}, model.Options{})
	if !sameViews(got, want) {
		t.Fatalf("views depend on input order:\n%s\nwant:\n%s", render(got), render(want))
	}
	if !proto.Equal(got.ByNode["node-b"], want.ByNode["node-b"]) || got.ByNode["node-b"] == nil {
		t.Fatal("node-b's view is missing")
	}
}
