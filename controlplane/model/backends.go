package model

import (
	"maps"
	"net/netip"
	"slices"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// group is the endpoints of one service port in one IP family, and what
// each kind of node selects from them. kube-proxy runs one proxier per
// family, so every decision below (ready or terminating fallback, topology
// mode) is taken per family, as it does.
type group struct {
	eps        []endpoint
	readyCount int
	// hasAny is set when some endpoint anywhere takes new connections
	// (ready, or serving and terminating).
	hasAny bool
	// all is the cluster-wide selection; drain lists the indexes of the
	// endpoints it drains.
	all   []*spokev1.Endpoint
	drain []int
	// byZone and byNode index the ready endpoints hinted for each zone and
	// node. Each is set only when every ready endpoint has hints of its
	// kind: otherwise kube-proxy ignores hints of that kind altogether.
	byZone, byNode map[string][]int
	// local indexes, per node, the endpoints on it that a Local policy may
	// use (ready or terminating).
	local map[string][]int
	// selections memoizes topology selections by variant.
	selections map[variant][]*spokev1.Endpoint
}

// variant names the cluster-wide selection a node uses in one group.
type variant struct {
	kind byte // 0: every endpoint, 'z': a zone's, 'n': a node's
	name string
}

// include says whether a selection lists an endpoint, and whether as
// draining. Ready endpoints take new connections. Terminating endpoints
// are drained, except that serving ones take new connections when the
// selection has no ready endpoint (fallback).
func include(e *endpoint, fallback bool) (listed, draining bool) {
	if e.ready {
		return true, false
	}
	if !e.terminating {
		return false, false
	}
	return true, !fallback || !e.serving
}

func newGroup(eps []endpoint, usesLocal bool) *group {
	g := &group{eps: eps}
	zoneHinted, nodeHinted := true, true
	for i := range eps {
		e := &eps[i]
		if e.ready {
			g.readyCount++
			zoneHinted = zoneHinted && len(e.zones) > 0
			nodeHinted = nodeHinted && len(e.nodes) > 0
		}
		g.hasAny = g.hasAny || e.ready || (e.serving && e.terminating)
	}
	if g.readyCount > 0 && zoneHinted {
		g.byZone = map[string][]int{}
	}
	if g.readyCount > 0 && nodeHinted {
		g.byNode = map[string][]int{}
	}
	if usesLocal {
		g.local = map[string][]int{}
	}
	fallback := g.readyCount == 0
	for i := range eps {
		e := &eps[i]
		listed, draining := include(e, fallback)
		if !listed {
			continue
		}
		g.all = append(g.all, e.message(draining))
		if draining {
			g.drain = append(g.drain, i)
		}
		if e.ready && g.byZone != nil {
			for _, z := range e.zones {
				g.byZone[z] = append(g.byZone[z], i)
			}
		}
		if e.ready && g.byNode != nil {
			for _, n := range e.nodes {
				g.byNode[n] = append(g.byNode[n], i)
			}
		}
		if g.local != nil && e.node != "" {
			g.local[e.node] = append(g.local[e.node], i)
		}
	}
	return g
}

// variant returns the selection a node in a zone uses, as kube-proxy's
// topology safeguards decide it: its node's hinted endpoints if every
// ready endpoint has node hints and one names the node, else its zone's
// if every ready endpoint has zone hints and one names the zone, else
// every endpoint. A selection that holds every ready endpoint is "every
// endpoint".
func (g *group) variant(node, zone string) variant {
	if g == nil {
		return variant{}
	}
	if idx, ok := g.byNode[node]; ok {
		if len(idx) == g.readyCount {
			return variant{}
		}
		return variant{'n', node}
	}
	if idx, ok := g.byZone[zone]; ok && len(idx) < g.readyCount {
		return variant{'z', zone}
	}
	return variant{}
}

// selection returns the endpoints of a variant: the hinted ready ones and
// every drained one, in address order.
func (g *group) selection(v variant) []*spokev1.Endpoint {
	if g == nil {
		return nil
	}
	if v.kind == 0 {
		return g.all
	}
	if s, ok := g.selections[v]; ok {
		return s
	}
	hinted := g.byZone[v.name]
	if v.kind == 'n' {
		hinted = g.byNode[v.name]
	}
	s := make([]*spokev1.Endpoint, 0, len(hinted)+len(g.drain))
	i, j := 0, 0
	for i < len(hinted) || j < len(g.drain) {
		if j == len(g.drain) || (i < len(hinted) && hinted[i] < g.drain[j]) {
			s = append(s, g.eps[hinted[i]].message(false))
			i++
		} else {
			s = append(s, g.eps[g.drain[j]].message(true))
			j++
		}
	}
	if g.selections == nil {
		g.selections = map[variant][]*spokev1.Endpoint{}
	}
	g.selections[v] = s
	return s
}

// localSelection returns the endpoints a Local policy uses on a node:
// the node's ready endpoints, or its serving terminating ones when it has
// no ready one, with its other terminating endpoints drained.
func (g *group) localSelection(node string) []*spokev1.Endpoint {
	if g == nil {
		return nil
	}
	idx := g.local[node]
	fallback := true
	for _, i := range idx {
		if g.eps[i].ready {
			fallback = false
			break
		}
	}
	s := make([]*spokev1.Endpoint, 0, len(idx))
	for _, i := range idx {
		e := &g.eps[i]
		if listed, draining := include(e, fallback); listed {
			s = append(s, e.message(draining))
		}
	}
	return s
}

// portBackends computes the backends of one service port for any node.
type portBackends struct {
	spec   *portSpec
	groups [2]*group
	hasAny bool
	// cluster memoizes cluster-wide backends by the variants they use, so
	// nodes and zones that select alike share one message.
	cluster map[[2]variant]*spokev1.Backends
	noLocal *spokev1.Backends
	// truncated is set when a set of backends exceeded MaxEndpoints.
	truncated bool
}

func newPortBackends(spec *portSpec, parsed []parsedSlice, usesLocal bool) *portBackends {
	p := &portBackends{spec: spec, cluster: map[[2]variant]*spokev1.Backends{}}
	for f, eps := range endpointsOf(spec.key, parsed) {
		if len(eps) == 0 {
			continue
		}
		p.groups[f] = newGroup(eps, usesLocal)
		p.hasAny = p.hasAny || p.groups[f].hasAny
	}
	p.noLocal = &spokev1.Backends{NoEndpoints: p.localNoEndpoints()}
	return p
}

// localNoEndpoints is what a Local policy does without a local endpoint:
// drop while the service has endpoints elsewhere, reject when it has none.
func (p *portBackends) localNoEndpoints() spokev1.NoEndpoints {
	if p.hasAny {
		return spokev1.NoEndpoints_NO_ENDPOINTS_DROP
	}
	return spokev1.NoEndpoints_NO_ENDPOINTS_REJECT
}

func (p *portBackends) clusterFor(node, zone string) *spokev1.Backends {
	key := [2]variant{p.groups[0].variant(node, zone), p.groups[1].variant(node, zone)}
	if b, ok := p.cluster[key]; ok {
		return b
	}
	b := &spokev1.Backends{
		Endpoints:   p.join(p.groups[0].selection(key[0]), p.groups[1].selection(key[1])),
		NoEndpoints: spokev1.NoEndpoints_NO_ENDPOINTS_REJECT,
	}
	p.cluster[key] = b
	return b
}

func (p *portBackends) localFor(node string) *spokev1.Backends {
	v4, v6 := p.groups[0].localSelection(node), p.groups[1].localSelection(node)
	if len(v4) == 0 && len(v6) == 0 {
		return p.noLocal
	}
	return &spokev1.Backends{Endpoints: p.join(v4, v6), NoEndpoints: p.localNoEndpoints()}
}

// join concatenates the selections of both families (IPv4 addresses sort
// first) and bounds the result.
func (p *portBackends) join(v4, v6 []*spokev1.Endpoint) []*spokev1.Endpoint {
	var out []*spokev1.Endpoint
	switch {
	case len(v6) == 0:
		out = v4
	case len(v4) == 0:
		out = v6
	default:
		out = make([]*spokev1.Endpoint, 0, len(v4)+len(v6))
		out = append(append(out, v4...), v6...)
	}
	if len(out) > MaxEndpoints {
		p.truncated = true
		out = out[:MaxEndpoints:MaxEndpoints]
	}
	return out
}

// zones returns the zones whose selection differs from every endpoint in
// some group.
func (p *portBackends) zones(into map[string]bool) {
	for _, g := range p.groups {
		if g == nil {
			continue
		}
		for z, idx := range g.byZone {
			if len(idx) < g.readyCount {
				into[z] = true
			}
		}
	}
}

// nodes returns the nodes whose view may differ from their zone's: those
// hinted by name and, under a Local policy, those with local endpoints.
func (p *portBackends) nodes(into map[string]bool) {
	for _, g := range p.groups {
		if g == nil {
			continue
		}
		for n := range g.byNode {
			into[n] = true
		}
		for n := range g.local {
			into[n] = true
		}
	}
}

// assemble builds the views of every group of nodes.
func assemble(spec *serviceSpec, ports []*portBackends, topo Topology) Views {
	views := Views{Default: view(spec, ports, "", "")}
	zones, nodes := map[string]bool{}, map[string]bool{}
	for _, p := range ports {
		p.zones(zones)
		p.nodes(nodes)
	}
	if len(zones) > 0 {
		views.ByZone = make(map[string]*spokev1.Service, len(zones))
		for _, z := range slices.Sorted(maps.Keys(zones)) {
			views.ByZone[z] = view(spec, ports, "", z)
		}
	}
	if len(nodes) > 0 {
		views.ByNode = make(map[string]*spokev1.Service, len(nodes))
		for _, n := range slices.Sorted(maps.Keys(nodes)) {
			views.ByNode[n] = view(spec, ports, n, topo.Zones[n])
		}
	}
	return views
}

// view builds the view of a node in a zone; node "" stands for every node
// with no local endpoint and no node hint.
func view(spec *serviceSpec, ports []*portBackends, node, zone string) *spokev1.Service {
	b := spec.base
	out := &spokev1.Service{
		Namespace:                     b.Namespace,
		Name:                          b.Name,
		ClusterIps:                    b.ClusterIps,
		ExternalIps:                   b.ExternalIps,
		LoadBalancerIps:               b.LoadBalancerIps,
		LoadBalancerSourceRanges:      b.LoadBalancerSourceRanges,
		SessionAffinityTimeoutSeconds: b.SessionAffinityTimeoutSeconds,
		HealthCheckNodePort:           b.HealthCheckNodePort,
		Ports:                         make([]*spokev1.ServicePort, len(ports)),
	}
	for i, p := range ports {
		ps := p.spec
		sp := &spokev1.ServicePort{Name: ps.name, Protocol: ps.protocol, Port: ps.port, NodePort: ps.nodePort}
		switch {
		case spec.internalLocal:
			// Cluster IP traffic stays on the node. Traffic from the node
			// to an external frontend still reaches every endpoint, and so
			// does external traffic unless its policy is Local too (unset
			// External means the same as Internal).
			sp.Internal = p.localFor(node)
			if ps.external {
				cluster := p.clusterFor(node, zone)
				sp.ExternalFromNode = cluster
				if !spec.externalLocal {
					sp.External = cluster
				}
			}
		default:
			sp.Internal = p.clusterFor(node, zone)
			if ps.external && spec.externalLocal {
				sp.External = p.localFor(node)
			}
		}
		out.Ports[i] = sp
	}
	if b.HealthCheckNodePort != 0 && node != "" {
		out.HealthCheckLocalEndpoints = localReady(ports, node)
	}
	return out
}

// localReady counts a node's ready endpoints over every port of a service,
// one per address, as kube-proxy's health check does: serving but
// terminating endpoints do not count, even when the node still uses them.
func localReady(ports []*portBackends, node string) uint32 {
	seen := map[netip.Addr]bool{}
	for _, p := range ports {
		for _, g := range p.groups {
			if g == nil {
				continue
			}
			for _, i := range g.local[node] {
				if e := &g.eps[i]; e.ready {
					seen[e.addr] = true
				}
			}
		}
	}
	return uint32(len(seen))
}
