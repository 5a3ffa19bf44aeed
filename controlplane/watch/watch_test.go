package watch

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/internal/background"
	"github.com/spoke-proxy/spoke/internal/kubeapi"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// TestWatcherAgainstAPIServer runs the watcher against a real
// kube-apiserver: slices that arrive before their service, a node whose
// zone changes (recomputing only the services with a view of their own for
// it), trigger times carried to the store, and invalid input counted.
func TestWatcherAgainstAPIServer(t *testing.T) {
	api := kubeapi.ForTest(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cfg := api.RESTConfig()
	cfg.WarningHandler = rest.NoWarnings{}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, zone := range map[string]string{"node-a": "zone-1", "node-b": "zone-2", "node-c": "zone-1"} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: zone}}}
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The slices of "local" exist before the service does.
	createSlice(ctx, t, client, "local", "local-1", time.Time{},
		sliceEndpoint("10.244.1.5", "node-a", "zone-1"), sliceEndpoint("10.244.2.5", "node-b", "zone-2"))
	createSlice(ctx, t, client, "zoned", "zoned-1", time.Time{},
		sliceEndpoint("10.244.1.6", "node-a", "zone-1"), sliceEndpoint("10.244.2.6", "node-b", "zone-2"))

	st, reg := runWatcher(ctx, t, client)

	// "local" keeps cluster IP traffic on the node; its node port reaches
	// the endpoints of the node's zone (zone hints), so its node views read
	// their node's zone. "zoned" has zone views only.
	createService(ctx, t, client, "local", corev1.ServiceTypeNodePort, func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	})
	createService(ctx, t, client, "zoned", corev1.ServiceTypeClusterIP, func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferSameZone)
	})
	defer func() {
		if t.Failed() {
			for _, n := range []string{"node-a", "node-c"} {
				for _, svc := range []string{"default/local", "default/zoned"} {
					t.Logf("%s %s: %s", n, svc, backends(st, n, svc))
				}
			}
		}
	}()
	waitFor(ctx, t, "node-a's views", func() bool {
		return backends(st, "node-a", "default/local") == "internal drop 10.244.1.5:8080; external reject 10.244.1.5:8080; from-node reject 10.244.1.5:8080" &&
			backends(st, "node-a", "default/zoned") == "internal reject 10.244.1.6:8080"
	})
	waitFor(ctx, t, "node-c's views", func() bool {
		return backends(st, "node-c", "default/local") == "internal drop; external reject 10.244.1.5:8080; from-node reject 10.244.1.5:8080"
	})
	recomputes := metricValue(t, reg, "spoke_controlplane_topology_recomputes_total", "")

	// Moving node-a to zone-2 recomputes "local" only; the store moves
	// node-a to zone-2's view of "zoned" by itself.
	n, err := client.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Labels[corev1.LabelTopologyZone] = "zone-2"
	if _, err := client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "node-a's views in zone-2", func() bool {
		return backends(st, "node-a", "default/local") == "internal drop 10.244.1.5:8080; external reject 10.244.2.5:8080; from-node reject 10.244.2.5:8080" &&
			backends(st, "node-a", "default/zoned") == "internal reject 10.244.2.6:8080"
	})
	if got := metricValue(t, reg, "spoke_controlplane_topology_recomputes_total", "") - recomputes; got != 1 {
		t.Errorf("%v services recomputed for node-a's zone change, want 1 (local)", got)
	}

	// A slice update's trigger time reaches the views it changed.
	trigger := time.Now().UTC().Truncate(time.Microsecond)
	es, err := client.DiscoveryV1().EndpointSlices("default").Get(ctx, "local-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	es.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}
	es.Endpoints = append(es.Endpoints, sliceEndpoint("10.244.1.7", "node-a", "zone-2"))
	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the trigger time on node-a's view", func() bool {
		e := encoded(st, "node-a", "default/local")
		return e != nil && e.Trigger.Equal(trigger)
	})
	// The store has followed the slices' watch at least as far as the
	// update it applied, and every watch moved past the start.
	updated, err := client.DiscoveryV1().EndpointSlices("default").Get(ctx, "local-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rv, err := strconv.ParseUint(updated.ResourceVersion, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.APIRevisions(); r.GetEndpointSlices() < rv || r.GetServices() == 0 || r.GetNodes() == 0 {
		t.Errorf("store API revisions %v, want endpoint slices at %d or later and the others set", r, rv)
	}
	if got := metricValue(t, reg, "spoke_controlplane_sync_proxy_rules_endpoint_changes_total", ""); got < 3 {
		t.Errorf("%v endpoint changes counted, want at least 3", got)
	}

	// An external IP of a family the service lacks is skipped and counted;
	// the rest of the service is served.
	createService(ctx, t, client, "odd", corev1.ServiceTypeClusterIP, func(s *corev1.Service) {
		s.Spec.ExternalIPs = []string{"192.0.2.10", "2001:db8::10"}
	})
	waitFor(ctx, t, "the service with an invalid external IP", func() bool {
		e := encoded(st, "node-b", "default/odd")
		return e != nil && strings.Join(e.Resource.GetService().GetExternalIps(), ",") == "192.0.2.10"
	})
	if got := metricValue(t, reg, "spoke_controlplane_invalid_input_total", "Service"); got < 1 {
		t.Errorf("%v invalid inputs counted, want at least 1", got)
	}
}

// runWatcher runs a watcher into a new store until the test ends, and
// waits for the store to be ready.
func runWatcher(ctx context.Context, t *testing.T, client kubernetes.Interface) (*store.Store, *prometheus.Registry) {
	t.Helper()
	st := store.New()
	reg := prometheus.NewPedanticRegistry()
	w, err := New(Options{Client: client, Store: st, Window: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	background.Run(ctx, t, "watcher", w.Run)
	select {
	case <-st.Ready():
	case <-ctx.Done():
		t.Fatal("store never became ready")
	}
	return st, reg
}

func createService(ctx context.Context, t *testing.T, client kubernetes.Interface, name string, typ corev1.ServiceType, opt func(*corev1.Service)) {
	t.Helper()
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{
			Type:     typ,
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	opt(s)
	if _, err := client.CoreV1().Services("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createSlice(ctx context.Context, t *testing.T, client kubernetes.Interface, svc, name string, trigger time.Time, eps ...discoveryv1.Endpoint) {
	t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
		Endpoints:   eps,
	}
	if !trigger.IsZero() {
		es.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func sliceEndpoint(addr, node, zone string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{addr},
		NodeName:   ptr.To(node),
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		Hints:      &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}},
	}
}

func encoded(st *store.Store, node, name string) *store.Encoded {
	for _, e := range st.View(node) {
		if e.Name == name {
			return e
		}
	}
	return nil
}

// backends renders a node's backends of a service's first port.
func backends(st *store.Store, node, name string) string {
	e := encoded(st, node, name)
	if e == nil || len(e.Resource.GetService().GetPorts()) == 0 {
		return ""
	}
	p := e.Resource.GetService().GetPorts()[0]
	var parts []string
	for _, b := range []struct {
		what string
		b    *spokev1.Backends
	}{{"internal", p.GetInternal()}, {"external", p.GetExternal()}, {"from-node", p.GetExternalFromNode()}} {
		if b.b == nil {
			continue
		}
		s := b.what + " " + strings.ToLower(strings.TrimPrefix(b.b.GetNoEndpoints().String(), "NO_ENDPOINTS_"))
		for _, ep := range b.b.GetEndpoints() {
			s += fmt.Sprintf(" %s:%d", ep.GetIp(), ep.GetPort())
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// metricValue returns a counter's value, for the series with the given
// label value ("" for a counter without labels).
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if label == "" || (len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
