package model_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/store"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// The benchmark cluster: 10,000 services on 5,000 nodes in 3 zones, each
// service with one port and one slice of 10 endpoints on random nodes.
// 5% of the services have a node-dependent policy (a third each:
// internalTrafficPolicy Local, a LoadBalancer with externalTrafficPolicy
// Local, PreferSameNode hints), 10% have PreferClose zone hints, the rest
// are plain ClusterIP services.
const (
	benchServices  = 10000
	benchNodes     = 5000
	benchZones     = 3
	benchEndpoints = 10
)

type benchCluster struct {
	topo     model.Topology
	nodes    map[string]*spokev1.Node
	services []*corev1.Service
	slices   [][]*discoveryv1.EndpointSlice
}

func newBenchCluster() *benchCluster {
	c := &benchCluster{topo: model.Topology{Zones: make(map[string]string, benchNodes)}, nodes: make(map[string]*spokev1.Node, benchNodes)}
	for i := range benchNodes {
		name, zone := fmt.Sprintf("node-%d", i), fmt.Sprintf("zone-%d", i%benchZones)
		c.topo.Zones[name] = zone
		c.nodes[name] = &spokev1.Node{Name: name, Zone: zone, Addresses: []string{fmt.Sprintf("192.168.%d.%d", i/250, i%250+1)}}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range benchServices {
		name := fmt.Sprintf("svc-%d", i)
		opts := []func(*corev1.Service){port("http", corev1.ProtocolTCP, 80, 0)}
		kind := i % 60
		switch kind {
		case 0:
			opts = append(opts, internalLocal)
		case 1:
			opts = []func(*corev1.Service){svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, int32(30000+i%2000)),
				ingress(fmt.Sprintf("198.51.%d.%d", i/250%250, i%250+1), ""), externalLocal(int32(32000 + i%700))}
		case 2:
			opts = append(opts, func(s *corev1.Service) {
				s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferSameNode)
			})
		}
		c.services = append(c.services, service(name, []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)}, opts...))
		eps := make([]discoveryv1.Endpoint, benchEndpoints)
		for j := range eps {
			n := rng.IntN(benchNodes)
			node := fmt.Sprintf("node-%d", n)
			var hints []func(*discoveryv1.Endpoint)
			switch {
			case kind == 2:
				hints = append(hints, forZones(c.topo.Zones[node]), forNodes(node))
			case i%10 == 3:
				hints = append(hints, forZones(c.topo.Zones[node]))
			}
			eps[j] = endpoint(fmt.Sprintf("10.%d.%d.%d", 128+i/10000, i/40%250, (i%40)*6+j+1), node, ready, hints...)
		}
		c.slices = append(c.slices, []*discoveryv1.EndpointSlice{endpointSlice(name+"-1", name, v4, httpTCP, eps...)})
	}
	return c
}

func (c *benchCluster) compute(b *testing.B, i int) *model.Views {
	views, errs := model.Compute(c.services[i], c.slices[i], c.topo, model.Options{})
	if len(errs) > 0 {
		b.Fatal(errs)
	}
	return &views
}

// recompute computes every service into one batch.
func (c *benchCluster) recompute(b *testing.B) store.Batch {
	batch := store.Batch{Services: make(map[string]*model.Views, benchServices)}
	for i := range c.services {
		batch.Services["ns/"+c.services[i].Name] = c.compute(b, i)
	}
	return batch
}

func (c *benchCluster) newStore(b *testing.B) *store.Store {
	s := store.New()
	if _, err := s.Apply(store.Batch{Nodes: c.nodes}); err != nil {
		b.Fatal(err)
	}
	return s
}

func countViews(batch store.Batch) int {
	n := 0
	for _, v := range batch.Services {
		if v.Default != nil {
			n++
		}
		n += len(v.ByZone) + len(v.ByNode)
	}
	return n
}

// BenchmarkComputeFullRecompute computes the views of every service and
// publishes them: into an empty store (a control plane's first sync), and
// into a store that already holds them (nothing changed, every view is
// encoded and compared).
func BenchmarkComputeFullRecompute(b *testing.B) {
	c := newBenchCluster()
	b.Run("empty-store", func(b *testing.B) {
		b.ReportAllocs()
		views := 0
		for b.Loop() {
			b.StopTimer()
			s := c.newStore(b)
			b.StartTimer()
			batch := c.recompute(b)
			if _, err := s.Apply(batch); err != nil {
				b.Fatal(err)
			}
			views = countViews(batch)
		}
		b.ReportMetric(float64(views), "views")
	})
	b.Run("unchanged", func(b *testing.B) {
		s := c.newStore(b)
		if _, err := s.Apply(c.recompute(b)); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Apply(c.recompute(b)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkComputeEndpointChange flips one endpoint of one service between
// ready and not ready, recomputes that service and publishes it, in a
// store that holds the whole cluster: the work of one EndpointSlice
// update.
func BenchmarkComputeEndpointChange(b *testing.B) {
	c := newBenchCluster()
	for _, bc := range []struct {
		name    string
		service int
	}{
		{"cluster", 5},         // plain ClusterIP
		{"zone-hints", 3},      // PreferClose
		{"internal-local", 60}, // internalTrafficPolicy Local
		{"external-local", 61}, // LoadBalancer, externalTrafficPolicy Local
		{"same-node", 62},      // PreferSameNode
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := c.newStore(b)
			if _, err := s.Apply(c.recompute(b)); err != nil {
				b.Fatal(err)
			}
			i := bc.service
			key := "ns/" + c.services[i].Name
			cond := &c.slices[i][0].Endpoints[0].Conditions
			defer func() { cond.Ready = ptr.To(true) }()
			b.ReportAllocs()
			for b.Loop() {
				cond.Ready = ptr.To(!*cond.Ready)
				if _, err := s.Apply(store.Batch{Services: map[string]*model.Views{key: c.compute(b, i)}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
