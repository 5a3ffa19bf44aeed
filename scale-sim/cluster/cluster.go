package cluster

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/controlplane/model"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Namespace holds every simulated service.
const Namespace = "scale-sim"

// ProxyName is the proxy name the simulator's control plane runs with.
const ProxyName = "spoke"

// sliceSize is the endpoints per EndpointSlice, as the EndpointSlice
// controller's default maximum.
const sliceSize = 100

// Spec is the shape of a simulated cluster.
type Spec struct {
	Nodes, Zones, Services, EndpointsPerService int
	// LocalFraction of the services are NodePort services with
	// externalTrafficPolicy Local: the nodes hosting their endpoints get a
	// view of their own.
	LocalFraction float64
	// HintedFraction of the services use trafficDistribution PreferClose,
	// their endpoints hinted for their own zone: each zone gets a view.
	HintedFraction float64
	Seed           uint64
}

// Cluster is the simulated cluster's objects and the views the control
// plane must compute from them. Service i's objects change only under
// Lock(i).
type Cluster struct {
	Spec  Spec
	Nodes []*corev1.Node
	// Zone of each node, by index.
	Zone []string
	// NodesByZone lists node indices per zone.
	NodesByZone map[string][]int
	Services    []*corev1.Service
	Slices      [][]*discoveryv1.EndpointSlice
	topo        model.Topology
	nodeIndex   map[string]int

	locks  []sync.Mutex
	views  []atomic.Pointer[Versions]
	rngMu  sync.Mutex
	rng    *rand.Rand
	nextIP uint32
}

// Versions are the versions of one service's views, as model.Views.
type Versions struct {
	Default string
	ByZone  map[string]string
	ByNode  map[string]string
}

// For returns the version a node sees; "" means none.
func (v *Versions) For(node, zone string) string {
	if s, ok := v.ByNode[node]; ok {
		return s
	}
	if s, ok := v.ByZone[zone]; ok {
		return s
	}
	return v.Default
}

// NodeName returns the name of node i.
func NodeName(i int) string { return fmt.Sprintf("sim-node-%05d", i) }

// ServiceName returns the name of service i.
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// ServiceIndex returns the index of a resource name "scale-sim/svc-NNNNN",
// or -1 for any other name.
func ServiceIndex(resource string) int {
	rest, ok := strings.CutPrefix(resource, Namespace+"/svc-")
	if !ok {
		return -1
	}
	i, err := strconv.Atoi(rest)
	if err != nil {
		return -1
	}
	return i
}

// New builds a cluster's objects as an API server would store them, with
// cluster IPs and node ports assigned.
func New(spec Spec) *Cluster {
	c := &Cluster{
		Spec:        spec,
		NodesByZone: map[string][]int{},
		topo:        model.Topology{Zones: make(map[string]string, spec.Nodes)},
		nodeIndex:   make(map[string]int, spec.Nodes),
		locks:       make([]sync.Mutex, spec.Services),
		views:       make([]atomic.Pointer[Versions], spec.Services),
		rng:         rand.New(rand.NewPCG(spec.Seed, 0x5ca1e)),
	}
	for i := range spec.Nodes {
		zone := fmt.Sprintf("zone-%d", i%max(spec.Zones, 1))
		name := NodeName(i)
		addr := netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)})
		c.Nodes = append(c.Nodes, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
				corev1.LabelTopologyZone: zone, corev1.LabelHostname: name}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: addr.String()},
				{Type: corev1.NodeHostName, Address: name}}},
		})
		c.Zone = append(c.Zone, zone)
		c.NodesByZone[zone] = append(c.NodesByZone[zone], i)
		c.topo.Zones[name] = zone
		c.nodeIndex[name] = i
	}
	for i := range spec.Services {
		svc := c.service(i)
		c.Services = append(c.Services, svc)
		c.Slices = append(c.Slices, c.slices(i, svc))
	}
	return c
}

// NodeIndex returns a node's index, or -1.
func (c *Cluster) NodeIndex(name string) int {
	if i, ok := c.nodeIndex[name]; ok {
		return i
	}
	return -1
}

func (c *Cluster) service(i int) *corev1.Service {
	r := c.rng
	local := r.Float64() < c.Spec.LocalFraction
	hinted := r.Float64() < c.Spec.HintedFraction
	ip := netip.AddrFrom4([4]byte{10, 96 + byte((i+2)>>16), byte((i + 2) >> 8), byte(i + 2)}).String()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: ServiceName(i), Labels: map[string]string{"app": ServiceName(i)}},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeClusterIP,
			ClusterIP:             ip,
			ClusterIPs:            []string{ip},
			IPFamilies:            []corev1.IPFamily{corev1.IPv4Protocol},
			IPFamilyPolicy:        ptr.To(corev1.IPFamilyPolicySingleStack),
			SessionAffinity:       corev1.ServiceAffinityNone,
			InternalTrafficPolicy: ptr.To(corev1.ServiceInternalTrafficPolicyCluster),
			Selector:              map[string]string{"app": ServiceName(i)},
			Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080),
			}},
		},
	}
	if local {
		svc.Spec.Type = corev1.ServiceTypeNodePort
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		svc.Spec.Ports[0].NodePort = int32(30000 + i%2700)
	}
	if hinted {
		svc.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferClose)
	}
	return svc
}

// IsLocal reports whether service i has a Local traffic policy.
func (c *Cluster) IsLocal(i int) bool {
	return c.Services[i].Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
}

func (c *Cluster) hinted(i int) bool { return c.Services[i].Spec.TrafficDistribution != nil }

func (c *Cluster) slices(i int, svc *corev1.Service) []*discoveryv1.EndpointSlice {
	var out []*discoveryv1.EndpointSlice
	n := c.Spec.EndpointsPerService
	for s := 0; s == 0 || s*sliceSize < n; s++ {
		es := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: fmt.Sprintf("%s-%d", svc.Name, s), Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: "scale-sim.spoke-proxy.io"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		}
		for e := s * sliceSize; e < min(n, (s+1)*sliceSize); e++ {
			es.Endpoints = append(es.Endpoints, c.endpoint(i, c.randNode()))
		}
		out = append(out, es)
	}
	return out
}

func (c *Cluster) endpoint(svc, node int) discoveryv1.Endpoint {
	c.rngMu.Lock()
	c.nextIP++
	ipn := c.nextIP
	c.rngMu.Unlock()
	ip := netip.AddrFrom4([4]byte{10, 128 + byte(ipn>>16&0x7f), byte(ipn >> 8), byte(ipn)})
	ep := discoveryv1.Endpoint{
		Addresses:  []string{ip.String()},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		NodeName:   ptr.To(NodeName(node)),
		Zone:       ptr.To(c.Zone[node]),
	}
	if c.hinted(svc) {
		ep.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: c.Zone[node]}}}
	}
	return ep
}

func (c *Cluster) randNode() int {
	c.rngMu.Lock()
	defer c.rngMu.Unlock()
	return c.rng.IntN(len(c.Nodes))
}

// RandService picks a service uniformly.
func (c *Cluster) RandService() int {
	c.rngMu.Lock()
	defer c.rngMu.Unlock()
	return c.rng.IntN(len(c.Services))
}

// Lock serialises the changes of service i.
func (c *Cluster) Lock(i int) { c.locks[i].Lock() }

// Unlock ends a change of service i.
func (c *Cluster) Unlock(i int) { c.locks[i].Unlock() }

// Replace returns service i's slice with one endpoint replaced by a new
// pod on a random node, as a rolling update does: a copy to send to the
// API. The caller holds Lock(i) and calls Commit once the API took it.
func (c *Cluster) Replace(i int) (slice int, es *discoveryv1.EndpointSlice) {
	c.rngMu.Lock()
	slice = c.rng.IntN(len(c.Slices[i]))
	c.rngMu.Unlock()
	es = c.Slices[i][slice].DeepCopy()
	if len(es.Endpoints) == 0 {
		return slice, es
	}
	c.rngMu.Lock()
	e := c.rng.IntN(len(es.Endpoints))
	c.rngMu.Unlock()
	es.Endpoints[e] = c.endpoint(i, c.randNode())
	return slice, es
}

// Commit records what the API stored for one of service i's slices.
func (c *Cluster) Commit(i, slice int, es *discoveryv1.EndpointSlice) { c.Slices[i][slice] = es }

// Compute returns the versions of service i's views with slice replaced
// by es (es nil: as the objects are).
func (c *Cluster) Compute(i, slice int, es *discoveryv1.EndpointSlice) (Versions, error) {
	slices := c.Slices[i]
	if es != nil {
		slices = append([]*discoveryv1.EndpointSlice(nil), slices...)
		slices[slice] = es
	}
	views, errs := model.Compute(c.Services[i], slices, c.topo, model.Options{ProxyName: ProxyName})
	if len(errs) > 0 {
		return Versions{}, fmt.Errorf("service %d: %w", i, errs[0])
	}
	var v Versions
	var err error
	if v.Default, err = version(views.Default); err != nil {
		return v, err
	}
	if len(views.ByZone) > 0 {
		v.ByZone = make(map[string]string, len(views.ByZone))
		for z, s := range views.ByZone {
			if v.ByZone[z], err = version(s); err != nil {
				return v, err
			}
		}
	}
	if len(views.ByNode) > 0 {
		v.ByNode = make(map[string]string, len(views.ByNode))
		for n, s := range views.ByNode {
			if v.ByNode[n], err = version(s); err != nil {
				return v, err
			}
		}
	}
	return v, nil
}

// Views returns the versions last set for service i. Never modify them.
func (c *Cluster) Views(i int) *Versions {
	if v := c.views[i].Load(); v != nil {
		return v
	}
	return &Versions{}
}

// SetViews records the versions of service i's views; the caller holds
// Lock(i) once the simulation runs.
func (c *Cluster) SetViews(i int, v *Versions) { c.views[i].Store(v) }

func version(s *spokev1.Service) (string, error) {
	if s == nil {
		return "", nil
	}
	v, err := spokev1.ContentVersion(&spokev1.Resource{Kind: &spokev1.Resource_Service{Service: s}})
	if err != nil {
		return "", fmt.Errorf("hashing a view: %w", err)
	}
	return v, nil
}
