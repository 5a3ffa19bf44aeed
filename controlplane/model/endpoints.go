package model

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// member is one endpoint as an EndpointSlice lists it.
type member struct {
	addr                        netip.Addr
	node                        string
	ready, serving, terminating bool
	// zones and nodes are the topology hints (forZones, forNodes).
	zones, nodes []string
}

// parsedSlice is the valid part of one EndpointSlice.
type parsedSlice struct {
	family  int
	ports   map[portKey]uint16
	members []member
}

// parseSlices validates a service's slices. The slices are taken in order
// of name, so the result does not depend on the order they are given in.
func parseSlices(in []*discoveryv1.EndpointSlice, served families, report func(*discoveryv1.EndpointSlice, error)) []parsedSlice {
	sorted := make([]*discoveryv1.EndpointSlice, 0, len(in))
	for _, es := range in {
		// Slices labelled headless are for DNS only; kube-proxy ignores
		// them even when their service has a cluster IP.
		if es == nil {
			continue
		}
		if _, headless := es.Labels[corev1.IsHeadlessService]; !headless {
			sorted = append(sorted, es)
		}
	}
	slices.SortStableFunc(sorted, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	out := make([]parsedSlice, 0, len(sorted))
	for _, es := range sorted {
		ps, err := parseSlice(es, served, func(err error) { report(es, err) })
		if err != nil {
			report(es, err)
			continue
		}
		if ps != nil {
			out = append(out, *ps)
		}
	}
	return out
}

// parseSlice returns the valid part of a slice, nil for a slice Spoke has
// no use for, or an error when the whole slice is skipped.
func parseSlice(es *discoveryv1.EndpointSlice, served families, report func(error)) (*parsedSlice, error) {
	var family int
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4:
		family = 0
	case discoveryv1.AddressTypeIPv6:
		family = 1
	default:
		return nil, nil // FQDN slices are not for proxies
	}
	if !served[family] {
		return nil, fmt.Errorf("%s slice for a service without a %s cluster IP: skipped", es.AddressType, familyName(family))
	}
	if len(es.Endpoints) > MaxSliceEndpoints {
		return nil, fmt.Errorf("%d endpoints exceed the limit of %d: slice skipped", len(es.Endpoints), MaxSliceEndpoints)
	}
	if len(es.Ports) > MaxSlicePorts {
		return nil, fmt.Errorf("%d ports exceed the limit of %d: slice skipped", len(es.Ports), MaxSlicePorts)
	}
	ps := &parsedSlice{family: family, ports: make(map[portKey]uint16, len(es.Ports))}
	for _, p := range es.Ports {
		k := portKey{proto: corev1.ProtocolTCP}
		if p.Name != nil {
			k.name = *p.Name
		}
		if p.Protocol != nil {
			k.proto = *p.Protocol
		}
		switch {
		case k.proto != corev1.ProtocolTCP && k.proto != corev1.ProtocolUDP && k.proto != corev1.ProtocolSCTP:
			report(fmt.Errorf("port %q: unknown protocol %q", k.name, k.proto))
		case p.Port == nil:
			report(fmt.Errorf("port %q: no port number", k.name))
		case *p.Port < 1 || *p.Port > 65535:
			report(fmt.Errorf("port %q: port %d out of range", k.name, *p.Port))
		case ps.ports[k] != 0:
			report(fmt.Errorf("port %q: duplicate %s port", k.name, k.proto))
		default:
			ps.ports[k] = uint16(*p.Port)
		}
	}
	ps.members = make([]member, 0, len(es.Endpoints))
	for i := range es.Endpoints {
		m, err := parseEndpoint(&es.Endpoints[i], family)
		if err != nil {
			report(fmt.Errorf("endpoint %d: %w", i, err))
			continue
		}
		ps.members = append(ps.members, m)
	}
	return ps, nil
}

func parseEndpoint(e *discoveryv1.Endpoint, family int) (member, error) {
	// Every address of an endpoint is the same pod; like kube-proxy, use
	// the first.
	if len(e.Addresses) == 0 {
		return member{}, errors.New("no address")
	}
	a, err := ParseAddr(e.Addresses[0])
	if err != nil {
		return member{}, err
	}
	if familyOf(a) != family {
		return member{}, fmt.Errorf("address %s in an %s slice", a, familyName(family))
	}
	m := member{
		addr:        a,
		ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
		serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
		terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
	}
	if e.NodeName != nil {
		m.node = *e.NodeName
	}
	if h := e.Hints; h != nil {
		for _, z := range h.ForZones {
			m.zones = appendName(m.zones, z.Name)
		}
		for _, n := range h.ForNodes {
			m.nodes = appendName(m.nodes, n.Name)
		}
	}
	return m, nil
}

// appendName adds a non-empty name to a short list of unique names.
func appendName(names []string, name string) []string {
	if name == "" || slices.Contains(names, name) {
		return names
	}
	return append(names, name)
}

// rank orders duplicates of one endpoint: the most usable listing wins.
func (m *member) rank() int {
	switch {
	case m.ready:
		return 3
	case m.serving && m.terminating:
		return 2
	case m.terminating:
		return 1
	}
	return 0
}

// endpoint is one endpoint of one service port: a member with the port its
// slice maps the service port to.
type endpoint struct {
	*member
	port  uint16
	order int // of its slice, for ties between duplicates
	msgs  [2]*spokev1.Endpoint
}

// message returns the view's form of the endpoint; the messages are shared
// by every view that lists the endpoint.
func (e *endpoint) message(draining bool) *spokev1.Endpoint {
	i := 0
	if draining {
		i = 1
	}
	if e.msgs[i] == nil {
		e.msgs[i] = &spokev1.Endpoint{Ip: e.addr.String(), Port: uint32(e.port), Draining: draining}
	}
	return e.msgs[i]
}

// endpointsOf returns, per family, the endpoints of a service port across
// the slices, sorted by address and port, one per address and port: of
// duplicates, the most usable wins, then the one in the first slice by
// name.
func endpointsOf(key portKey, parsed []parsedSlice) [2][]endpoint {
	var out [2][]endpoint
	for i := range parsed {
		ps := &parsed[i]
		port, ok := ps.ports[key]
		if !ok {
			continue
		}
		if out[ps.family] == nil {
			out[ps.family] = make([]endpoint, 0, len(ps.members))
		}
		for j := range ps.members {
			out[ps.family] = append(out[ps.family], endpoint{member: &ps.members[j], port: port, order: i})
		}
	}
	for f := range out {
		eps := out[f]
		slices.SortFunc(eps, func(a, b endpoint) int {
			if c := a.addr.Compare(b.addr); c != 0 {
				return c
			}
			if c := cmp.Compare(a.port, b.port); c != 0 {
				return c
			}
			if c := cmp.Compare(b.rank(), a.rank()); c != 0 {
				return c
			}
			return cmp.Compare(a.order, b.order)
		})
		out[f] = slices.CompactFunc(eps, func(a, b endpoint) bool { return a.addr == b.addr && a.port == b.port })
	}
	return out
}
