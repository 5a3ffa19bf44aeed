package model

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// families records which IP families a service serves: [0] IPv4, [1] IPv6.
type families [2]bool

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func familyName(f int) string {
	if f == 0 {
		return "IPv4"
	}
	return "IPv6"
}

// serviceSpec is everything about a service that does not depend on its
// endpoints.
type serviceSpec struct {
	// base holds the service-wide fields of every view; views copy it.
	base     *spokev1.Service
	families families
	ports    []portSpec
	// internalLocal and externalLocal are the traffic policies, as
	// kube-proxy reads them: externalLocal only for a service reachable
	// from outside.
	internalLocal, externalLocal bool
}

// usesLocal reports whether any traffic of the service uses only the
// endpoints of the node it arrives on.
func (s *serviceSpec) usesLocal() bool {
	if s.internalLocal {
		return true
	}
	if !s.externalLocal {
		return false
	}
	for i := range s.ports {
		if s.ports[i].external {
			return true
		}
	}
	return false
}

// portKey matches a service port with EndpointSlice ports.
type portKey struct {
	name  string
	proto corev1.Protocol
}

type portSpec struct {
	key      portKey
	name     string
	protocol spokev1.Protocol
	port     uint32
	nodePort uint32
	// external is set when the port is reachable on a node port, an
	// external IP or a load-balancer IP.
	external bool
}

// parseService validates a service's own fields. It returns nil when no
// view can be made (no valid cluster IP).
func parseService(svc *corev1.Service, report func(error)) *serviceSpec {
	if !validName(svc.Namespace) || !validName(svc.Name) {
		report(errors.New("namespace and name must be non-empty, at most 253 bytes, without '/': service skipped"))
		return nil
	}
	s := &serviceSpec{base: &spokev1.Service{Namespace: svc.Namespace, Name: svc.Name}}
	for _, ip := range clusterIPs(svc) {
		a, err := ParseAddr(ip)
		if err != nil {
			report(fmt.Errorf("cluster IP: %w", err))
			continue
		}
		f := familyOf(a)
		if s.families[f] {
			report(fmt.Errorf("cluster IP %s: a second %s cluster IP", ip, familyName(f)))
			continue
		}
		s.families[f] = true
		s.base.ClusterIps = append(s.base.ClusterIps, ip)
	}
	if len(s.base.ClusterIps) == 0 {
		report(errors.New("no valid cluster IP: service skipped"))
		return nil
	}

	s.base.ExternalIps = s.addresses("external IP", svc.Spec.ExternalIPs, report)
	var ingress []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		// A Proxy-mode load balancer delivers traffic to the node with its
		// own address as the destination: the datapath must not
		// short-circuit the ingress IP.
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy) {
			continue
		}
		ingress = append(ingress, ing.IP)
	}
	s.base.LoadBalancerIps = s.addresses("load-balancer IP", ingress, report)
	if len(s.base.LoadBalancerIps) > 0 {
		s.base.LoadBalancerSourceRanges = sourceRanges(svc.Spec.LoadBalancerSourceRanges, report)
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.base.SessionAffinityTimeoutSeconds = affinityTimeout(svc, report)
	}

	nodePorts := svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer
	externallyAccessible := nodePorts || (svc.Spec.Type == corev1.ServiceTypeClusterIP && len(svc.Spec.ExternalIPs) > 0)
	s.internalLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	s.externalLocal = externallyAccessible && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	if s.externalLocal && svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		if hc := svc.Spec.HealthCheckNodePort; hc < 1 || hc > 65535 {
			report(fmt.Errorf("health check node port %d out of range", hc))
		} else {
			s.base.HealthCheckNodePort = uint32(hc)
		}
	}
	s.parsePorts(svc.Spec.Ports, nodePorts, report)
	return s
}

// validName accepts what can name a view: the API's names are stricter.
func validName(s string) bool {
	return s != "" && len(s) <= 253 && !strings.Contains(s, "/")
}

func clusterIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	return []string{svc.Spec.ClusterIP}
}

func (s *serviceSpec) parsePorts(ports []corev1.ServicePort, nodePorts bool, report func(error)) {
	type frontend struct {
		proto spokev1.Protocol
		port  int32
	}
	seen := make(map[frontend]bool, len(ports))
	seenNode := make(map[frontend]bool, len(ports))
	reachable := len(s.base.ExternalIps) > 0 || len(s.base.LoadBalancerIps) > 0
	for _, sp := range ports {
		if len(s.ports) == MaxPorts {
			report(fmt.Errorf("more than %d ports: the rest are skipped", MaxPorts))
			return
		}
		proto, err := protocol(sp.Protocol)
		if err != nil {
			report(fmt.Errorf("port %q: %w", sp.Name, err))
			continue
		}
		if sp.Port < 1 || sp.Port > 65535 {
			report(fmt.Errorf("port %q: port %d out of range", sp.Name, sp.Port))
			continue
		}
		if seen[frontend{proto, sp.Port}] {
			report(fmt.Errorf("port %q: duplicate %s port %d", sp.Name, sp.Protocol, sp.Port))
			continue
		}
		seen[frontend{proto, sp.Port}] = true
		p := portSpec{
			key:  portKey{sp.Name, k8sProtocol(sp.Protocol)},
			name: sp.Name, protocol: proto, port: uint32(sp.Port),
		}
		if nodePorts && sp.NodePort != 0 {
			switch {
			case sp.NodePort < 1 || sp.NodePort > 65535:
				report(fmt.Errorf("port %q: node port %d out of range", sp.Name, sp.NodePort))
			case seenNode[frontend{proto, sp.NodePort}]:
				report(fmt.Errorf("port %q: duplicate %s node port %d", sp.Name, sp.Protocol, sp.NodePort))
			default:
				seenNode[frontend{proto, sp.NodePort}] = true
				p.nodePort = uint32(sp.NodePort)
			}
		}
		p.external = p.nodePort != 0 || reachable
		s.ports = append(s.ports, p)
	}
}

// addresses parses a list of service addresses: canonical, of a family
// the service serves, without duplicates, sorted.
func (s *serviceSpec) addresses(what string, in []string, report func(error)) []string {
	var out []netip.Addr
	for _, ip := range in {
		a, err := ParseAddr(ip)
		if err != nil {
			report(fmt.Errorf("%s: %w", what, err))
			continue
		}
		if !s.families[familyOf(a)] {
			report(fmt.Errorf("%s %s: the service has no %s cluster IP", what, ip, familyName(familyOf(a))))
			continue
		}
		out = append(out, a)
	}
	return canonicalStrings(out, netip.Addr.Compare, what, report)
}

// canonicalStrings sorts vs by cmp, drops duplicates, keeps the first
// MaxAddresses (reporting, under the plural of what, that the rest are
// skipped) and returns their strings: nil for none.
func canonicalStrings[T interface {
	comparable
	String() string
}](vs []T, cmp func(a, b T) int, what string, report func(error)) []string {
	slices.SortFunc(vs, cmp)
	vs = slices.Compact(vs)
	if len(vs) > MaxAddresses {
		report(fmt.Errorf("more than %d %ss: the rest are skipped", MaxAddresses, what))
		vs = vs[:MaxAddresses]
	}
	if len(vs) == 0 {
		return nil
	}
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}
	return out
}

// sourceRanges parses loadBalancerSourceRanges as the API validates them
// (surrounding spaces allowed, host bits allowed) into canonical CIDRs.
func sourceRanges(in []string, report func(error)) []string {
	var out []netip.Prefix
	for _, c := range in {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil || p.Addr().Is4In6() {
			report(fmt.Errorf("load-balancer source range %q is not a canonical CIDR", c))
			continue
		}
		out = append(out, p.Masked())
	}
	return canonicalStrings(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	}, "load-balancer source range", report)
}

func affinityTimeout(svc *corev1.Service, report func(error)) uint32 {
	cfg := svc.Spec.SessionAffinityConfig
	if cfg == nil || cfg.ClientIP == nil || cfg.ClientIP.TimeoutSeconds == nil {
		return DefaultAffinityTimeout
	}
	t := *cfg.ClientIP.TimeoutSeconds
	if t < 1 || t > MaxAffinityTimeout {
		report(fmt.Errorf("session affinity timeout %d s out of range: using %d s", t, DefaultAffinityTimeout))
		return DefaultAffinityTimeout
	}
	return uint32(t)
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

// k8sProtocol applies the API's default protocol.
func k8sProtocol(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
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
