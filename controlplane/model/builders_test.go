package model_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/controlplane/model"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// service builds a ClusterIP service in namespace "ns" with the given
// cluster IPs, changed by the options.
func service(name string, clusterIPs []string, opts ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  clusterIPs[0],
			ClusterIPs: clusterIPs,
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func port(name string, proto corev1.Protocol, p, nodePort int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: name, Protocol: proto, Port: p, NodePort: nodePort})
	}
}

func svcType(t corev1.ServiceType) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.Type = t }
}

func externalIPs(ips ...string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
}

func ingress(ip string, mode corev1.LoadBalancerIPMode) func(*corev1.Service) {
	return func(s *corev1.Service) {
		ing := corev1.LoadBalancerIngress{IP: ip}
		if mode != "" {
			ing.IPMode = ptr.To(mode)
		}
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, ing)
	}
}

func sourceRanges(cidrs ...string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.LoadBalancerSourceRanges = cidrs }
}

func affinity(timeout *int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		if timeout != nil {
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: timeout}}
		}
	}
}

func internalLocal(s *corev1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
}

func externalLocal(healthCheckNodePort int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = healthCheckNodePort
	}
}

func label(k, v string) func(*corev1.Service) {
	return func(s *corev1.Service) {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[k] = v
	}
}

// slicePort is an EndpointSlice port.
func slicePort(name string, proto corev1.Protocol, p int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: ptr.To(p)}
}

// endpointSlice builds a slice of service svc in namespace "ns".
func endpointSlice(name, svc string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
}

// withLabel sets a label on an EndpointSlice.
func withLabel(es *discoveryv1.EndpointSlice, key, value string) *discoveryv1.EndpointSlice {
	es.Labels[key] = value
	return es
}

// Endpoint states.
const (
	ready              = "ready"
	notReady           = "not-ready"
	servingTerminating = "serving-terminating"
	terminating        = "terminating"
)

// endpoint builds an endpoint on a node in a state, with options for hints.
func endpoint(addr, node, state string, opts ...func(*discoveryv1.Endpoint)) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}}
	if node != "" {
		e.NodeName = ptr.To(node)
	}
	switch state {
	case ready:
		e.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}
	case notReady:
		e.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
	case servingTerminating:
		e.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	case terminating:
		e.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(true)}
	default:
		panic("unknown endpoint state " + state)
	}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func forZones(zones ...string) func(*discoveryv1.Endpoint) {
	return func(e *discoveryv1.Endpoint) {
		if e.Hints == nil {
			e.Hints = &discoveryv1.EndpointHints{}
		}
		for _, z := range zones {
			e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: z})
		}
	}
}

func forNodes(nodes ...string) func(*discoveryv1.Endpoint) {
	return func(e *discoveryv1.Endpoint) {
		if e.Hints == nil {
			e.Hints = &discoveryv1.EndpointHints{}
		}
		for _, n := range nodes {
			e.Hints.ForNodes = append(e.Hints.ForNodes, discoveryv1.ForNode{Name: n})
		}
	}
}

// render prints views as text: one block per group of nodes, each port
// with its backends ("~" marks a draining endpoint).
func render(v model.Views) string {
	var b strings.Builder
	if v.Default != nil {
		b.WriteString("default\n")
		renderService(&b, v.Default)
	}
	for _, z := range slices.Sorted(maps.Keys(v.ByZone)) {
		fmt.Fprintf(&b, "zone %s\n", z)
		renderService(&b, v.ByZone[z])
	}
	for _, n := range slices.Sorted(maps.Keys(v.ByNode)) {
		fmt.Fprintf(&b, "node %s\n", n)
		renderService(&b, v.ByNode[n])
	}
	return b.String()
}

func renderService(b *strings.Builder, s *spokev1.Service) {
	fmt.Fprintf(b, "  ips %s", strings.Join(s.ClusterIps, ","))
	if len(s.ExternalIps) > 0 {
		fmt.Fprintf(b, " external %s", strings.Join(s.ExternalIps, ","))
	}
	if len(s.LoadBalancerIps) > 0 {
		fmt.Fprintf(b, " lb %s", strings.Join(s.LoadBalancerIps, ","))
	}
	if len(s.LoadBalancerSourceRanges) > 0 {
		fmt.Fprintf(b, " ranges %s", strings.Join(s.LoadBalancerSourceRanges, ","))
	}
	if s.SessionAffinityTimeoutSeconds > 0 {
		fmt.Fprintf(b, " affinity %d", s.SessionAffinityTimeoutSeconds)
	}
	if s.HealthCheckNodePort > 0 {
		fmt.Fprintf(b, " healthcheck %d", s.HealthCheckNodePort)
	}
	if s.HealthCheckLocalEndpoints > 0 {
		fmt.Fprintf(b, " ready-here %d", s.HealthCheckLocalEndpoints)
	}
	b.WriteString("\n")
	for _, p := range s.Ports {
		fmt.Fprintf(b, "  port %q %s %d", p.Name, strings.TrimPrefix(p.Protocol.String(), "PROTOCOL_"), p.Port)
		if p.NodePort > 0 {
			fmt.Fprintf(b, " nodeport %d", p.NodePort)
		}
		b.WriteString("\n")
		renderBackends(b, "internal", p.Internal)
		renderBackends(b, "external", p.External)
		renderBackends(b, "from-node", p.ExternalFromNode)
	}
}

func renderBackends(b *strings.Builder, what string, be *spokev1.Backends) {
	if be == nil {
		return
	}
	fmt.Fprintf(b, "    %s %s:", what, strings.ToLower(strings.TrimPrefix(be.NoEndpoints.String(), "NO_ENDPOINTS_")))
	for _, e := range be.Endpoints {
		b.WriteString(" ")
		if e.Draining {
			b.WriteString("~")
		}
		host := e.Ip
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		fmt.Fprintf(b, "%s:%d", host, e.Port)
	}
	b.WriteString("\n")
}

// dedent removes the common leading tabs of a raw string literal's lines
// and its first empty line, so expectations can be indented with the code.
func dedent(s string) string {
	s = strings.TrimPrefix(s, "\n")
	lines := strings.Split(s, "\n")
	indent := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, "\t"))
		if indent < 0 || n < indent {
			indent = n
		}
	}
	for i, l := range lines {
		if len(l) >= indent && indent > 0 {
			lines[i] = l[indent:]
		}
	}
	return strings.TrimRight(strings.Join(lines, "\n"), "\t ")
}
