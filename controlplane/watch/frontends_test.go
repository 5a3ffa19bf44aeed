package watch

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/internal/kubeapi"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

func lbService(name string, port uint32, ips ...string) *spokev1.Service {
	return &spokev1.Service{Namespace: "default", Name: name, ClusterIps: []string{"10.96.0.10"}, ExternalIps: ips,
		Ports: []*spokev1.ServicePort{{Name: "http", Protocol: spokev1.Protocol_PROTOCOL_TCP, Port: port}}}
}

func TestOldestServiceKeepsASharedFrontend(t *testing.T) {
	f := newFrontends()
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if others := f.set("default/new", t0.Add(time.Hour), frontendsOf(lbService("new", 80, "192.0.2.10", "192.0.2.11"))); len(others) != 0 {
		t.Fatalf("first claim affects %v", others)
	}
	// An older service claims one of the same frontends; another port of
	// the same address is no conflict.
	if others := f.set("default/old", t0, frontendsOf(lbService("old", 80, "192.0.2.10"))); !slices.Equal(others, []string{"default/new"}) {
		t.Fatalf("older claim affects %v, want default/new", others)
	}
	f.set("default/other-port", t0, frontendsOf(lbService("other-port", 443, "192.0.2.11")))
	if lost := f.losing("default/new"); !maps.Equal(lost, map[string]string{"192.0.2.10": "default/old"}) {
		t.Errorf("new loses %v, want 192.0.2.10 to default/old", lost)
	}
	if lost := f.losing("default/old"); len(lost) != 0 {
		t.Errorf("old loses %v", lost)
	}
	// Equal creation times: the name decides, the same way everywhere.
	f.set("default/b-twin", t0, frontendsOf(lbService("b-twin", 80, "192.0.2.20")))
	f.set("default/a-twin", t0, frontendsOf(lbService("a-twin", 80, "192.0.2.20")))
	if lost := f.losing("default/b-twin"); lost["192.0.2.20"] != "default/a-twin" {
		t.Errorf("b-twin loses %v, want 192.0.2.20 to a-twin", lost)
	}
	// The winner goes: the loser is told to recompute, and keeps it.
	if others := f.set("default/old", time.Time{}, nil); !slices.Equal(others, []string{"default/new"}) {
		t.Fatalf("removing the winner affects %v", others)
	}
	if lost := f.losing("default/new"); len(lost) != 0 {
		t.Errorf("after the winner left, new still loses %v", lost)
	}
}

func TestWithoutAddressesLeavesTheComputedViewsAlone(t *testing.T) {
	def := lbService("web", 80, "192.0.2.10", "192.0.2.11")
	def.LoadBalancerIps = []string{"192.0.2.10", "203.0.113.1"}
	node := lbService("web", 80, "192.0.2.10")
	v := model.Views{Default: def, ByNode: map[string]*spokev1.Service{"node-1": node}}
	got := withoutAddresses(v, map[string]string{"192.0.2.10": "default/old"})
	if !slices.Equal(got.Default.GetExternalIps(), []string{"192.0.2.11"}) || !slices.Equal(got.Default.GetLoadBalancerIps(), []string{"203.0.113.1"}) {
		t.Errorf("default view: external %v, load balancer %v", got.Default.GetExternalIps(), got.Default.GetLoadBalancerIps())
	}
	if len(got.ByNode["node-1"].GetExternalIps()) != 0 {
		t.Errorf("node view keeps %v", got.ByNode["node-1"].GetExternalIps())
	}
	if len(def.GetExternalIps()) != 2 || len(node.GetExternalIps()) != 1 {
		t.Error("the computed views were modified; they may be shared")
	}
}

// TestConflictingExternalIPsAgainstAPIServer: two services that ask for the
// same external IP and port are settled by age, not by the order they reach
// the control plane: the older one keeps the address on every node, the
// newer one serves without it until the older one goes.
func TestConflictingExternalIPsAgainstAPIServer(t *testing.T) {
	api := kubeapi.ForTest(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	client, err := kubernetes.NewForConfig(api.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	shared := func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.50"} }
	// The older service sorts last by name, so that a first-come or
	// last-come rule over the initial list would pick the other one.
	createService(ctx, t, client, "zeta-old", corev1.ServiceTypeClusterIP, shared)
	time.Sleep(1100 * time.Millisecond) // creation times have a resolution of one second
	createService(ctx, t, client, "alpha-new", corev1.ServiceTypeClusterIP, shared)

	st, reg := runWatcher(ctx, t, client)
	externalIPs := func(name string) string {
		e := encoded(st, "node-a", "default/"+name)
		if e == nil {
			return "missing"
		}
		return strings.Join(e.Resource.GetService().GetExternalIps(), ",")
	}
	waitFor(ctx, t, "the older service keeping the shared address", func() bool {
		return externalIPs("zeta-old") == "192.0.2.50" && externalIPs("alpha-new") == ""
	})
	if got := metricValue(t, reg, "spoke_controlplane_invalid_input_total", "frontend_conflict"); got < 1 {
		t.Errorf("conflicts counted: %v", got)
	}
	if err := client.CoreV1().Services("default").Delete(ctx, "zeta-old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the newer service taking the address once the older one is gone", func() bool {
		return externalIPs("zeta-old") == "missing" && externalIPs("alpha-new") == "192.0.2.50"
	})
}
