package model

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// ServiceProxyNameLabel names the proxy that must serve a service; services
// naming another proxy are skipped.
const ServiceProxyNameLabel = "service.kubernetes.io/service-proxy-name"

// Options are the settings of the view computation.
type Options struct {
	// ProxyName is this proxy's name for ServiceProxyNameLabel. Services
	// with the label set to any other value are skipped; with it empty,
	// every labelled service is skipped.
	ProxyName string
}

// Views are the views of one service across the cluster's nodes. A node
// sees ByNode[node] if present, else ByZone[zone] if present, else Default.
// Nodes differ only where a policy makes them differ, so most services have
// just a Default.
type Views struct {
	Default *spokev1.Service
	ByZone  map[string]*spokev1.Service
	ByNode  map[string]*spokev1.Service
}

// For returns the view a node in a zone sees; nil means the node does not
// program the service.
func (v *Views) For(node, zone string) *spokev1.Service {
	if s, ok := v.ByNode[node]; ok {
		return s
	}
	if s, ok := v.ByZone[zone]; ok {
		return s
	}
	return v.Default
}

// Empty reports whether no node sees the service.
func (v *Views) Empty() bool {
	return v.Default == nil && len(v.ByZone) == 0 && len(v.ByNode) == 0
}

// Topology is what the view computation needs to know of the nodes.
type Topology struct {
	// Zones maps a node name to its zone ("" when unlabelled).
	Zones map[string]string
}

// Skipped reports why a service is not proxied, or "" if it is.
func Skipped(svc *corev1.Service, opts Options) string {
	switch {
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		return "ExternalName service"
	case svc.Spec.ClusterIP == corev1.ClusterIPNone:
		return "headless service"
	case svc.Spec.ClusterIP == "":
		return "no cluster IP"
	}
	if name, ok := svc.Labels[ServiceProxyNameLabel]; ok && name != opts.ProxyName {
		return fmt.Sprintf("served by proxy %q", name)
	}
	return ""
}

// Compute returns the views of a service given every EndpointSlice that
// belongs to it. Problems with individual fields (an invalid address, an
// out-of-range port) skip that field and are returned as errors; they
// never stop the rest of the service from being computed. A nil service
// yields empty views.
func Compute(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, topo Topology, opts Options) (Views, []error) {
	if svc == nil || Skipped(svc, opts) != "" {
		return Views{}, nil
	}
	var errs []error
	report := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("service %s/%s: %s", svc.Namespace, svc.Name, fmt.Sprintf(format, args...)))
	}
	out := &spokev1.Service{Namespace: svc.Namespace, Name: svc.Name}
	families := map[bool]bool{} // is4 -> served
	for _, ip := range clusterIPs(svc) {
		a, err := ParseAddr(ip)
		if err != nil {
			report("cluster IP: %v", err)
			continue
		}
		families[a.Is4()] = true
		out.ClusterIps = append(out.ClusterIps, a.String())
	}
	if len(out.ClusterIps) == 0 {
		report("no valid cluster IP")
		return Views{}, errs
	}
	eps := collectEndpoints(endpointSlices, families)
	for _, sp := range svc.Spec.Ports {
		p, err := servicePort(sp)
		if err != nil {
			report("port %q: %v", sp.Name, err)
			continue
		}
		p.Internal = &spokev1.Backends{NoEndpoints: spokev1.NoEndpoints_NO_ENDPOINTS_REJECT}
		for _, ep := range eps {
			port, ok := ep.ports[portKey{sp.Name, sp.Protocol}]
			if !ok || !ep.ready {
				continue
			}
			p.Internal.Endpoints = append(p.Internal.Endpoints, &spokev1.Endpoint{Ip: ep.addr.String(), Port: uint32(port)})
		}
		sortEndpoints(p.Internal.Endpoints)
		out.Ports = append(out.Ports, p)
	}
	return Views{Default: out}, errs
}

func clusterIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	return []string{svc.Spec.ClusterIP}
}

func servicePort(sp corev1.ServicePort) (*spokev1.ServicePort, error) {
	proto, err := protocol(sp.Protocol)
	if err != nil {
		return nil, err
	}
	if sp.Port <= 0 || sp.Port > 65535 {
		return nil, fmt.Errorf("port %d out of range", sp.Port)
	}
	if sp.NodePort < 0 || sp.NodePort > 65535 {
		return nil, fmt.Errorf("node port %d out of range", sp.NodePort)
	}
	return &spokev1.ServicePort{Name: sp.Name, Protocol: proto, Port: uint32(sp.Port)}, nil
}

func protocol(p corev1.Protocol) (spokev1.Protocol, error) {
	switch p {
	case corev1.ProtocolTCP, "":
		return spokev1.Protocol_PROTOCOL_TCP, nil
	case corev1.ProtocolUDP:
		return spokev1.Protocol_PROTOCOL_UDP, nil
	case corev1.ProtocolSCTP:
		return spokev1.Protocol_PROTOCOL_SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q", p)
}

// ParseAddr parses an IP address in canonical form only. Kubernetes has
// accepted forms such as "010.0.0.1" in the past, which other parsers read
// as octal: such addresses are rejected, never guessed at.
func ParseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("invalid IP %q", s)
	}
	if a.Zone() != "" || a.Is4In6() || a.String() != s || a.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("IP %q is not in canonical form", s)
	}
	return a, nil
}

type portKey struct {
	name  string
	proto corev1.Protocol
}

// endpoint is one endpoint address merged across slices.
type endpoint struct {
	addr  netip.Addr
	ready bool
	ports map[portKey]int32
}

// collectEndpoints merges the endpoints of a service's slices, keeping the
// families the service serves. An address listed in several slices keeps
// its first (by slice name) appearance.
func collectEndpoints(endpointSlices []*discoveryv1.EndpointSlice, families map[bool]bool) []endpoint {
	sorted := slices.Clone(endpointSlices)
	slices.SortFunc(sorted, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	var out []endpoint
	seen := map[netip.Addr]bool{}
	for _, es := range sorted {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := map[portKey]int32{}
		for _, p := range es.Ports {
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				continue
			}
			name, proto := "", corev1.ProtocolTCP
			if p.Name != nil {
				name = *p.Name
			}
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			ports[portKey{name, proto}] = *p.Port
		}
		for _, e := range es.Endpoints {
			for _, s := range e.Addresses {
				a, err := ParseAddr(s)
				if err != nil || !families[a.Is4()] || seen[a] {
					continue
				}
				seen[a] = true
				ready := e.Conditions.Ready == nil || *e.Conditions.Ready
				out = append(out, endpoint{addr: a, ready: ready, ports: ports})
			}
		}
	}
	return out
}

func sortEndpoints(eps []*spokev1.Endpoint) {
	slices.SortFunc(eps, func(a, b *spokev1.Endpoint) int {
		if c := cmp.Compare(a.Ip, b.Ip); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
}

// NodeView returns the node resource content for a Node.
func NodeView(n *corev1.Node) *spokev1.Node {
	out := &spokev1.Node{Name: n.Name, Zone: n.Labels[corev1.LabelTopologyZone]}
	seen := map[string]bool{}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if _, err := ParseAddr(a.Address); err != nil || seen[a.Address] {
			continue
		}
		seen[a.Address] = true
		out.Addresses = append(out.Addresses, a.Address)
	}
	slices.Sort(out.Addresses)
	return out
}
