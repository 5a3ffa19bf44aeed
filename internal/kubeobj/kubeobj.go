// Package kubeobj builds the Kubernetes objects that tests and the
// conformance table feed to the control plane: Services changed by
// options, EndpointSlices and their endpoints in the states the
// EndpointSlice controller writes.
package kubeobj

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Service builds a ClusterIP service with the given cluster IPs (the first
// is the primary one), changed by the options in order.
func Service(namespace, name string, clusterIPs []string, opts ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
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

// Port adds a service port; a nodePort of 0 leaves it unset.
func Port(name string, proto corev1.Protocol, p, nodePort int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: name, Protocol: proto, Port: p, NodePort: nodePort})
	}
}

// Type sets the service type.
func Type(t corev1.ServiceType) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.Type = t }
}

// ExternalIPs sets the service's external IPs.
func ExternalIPs(ips ...string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
}

// Ingress adds a load-balancer ingress IP to the status; an empty mode
// leaves the IP mode unset.
func Ingress(ip string, mode corev1.LoadBalancerIPMode) func(*corev1.Service) {
	return func(s *corev1.Service) {
		ing := corev1.LoadBalancerIngress{IP: ip}
		if mode != "" {
			ing.IPMode = ptr.To(mode)
		}
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, ing)
	}
}

// IngressHostname adds a load-balancer ingress that has only a hostname.
func IngressHostname(host string) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{Hostname: host})
	}
}

// SourceRanges sets the CIDRs allowed to reach the load balancer.
func SourceRanges(cidrs ...string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.LoadBalancerSourceRanges = cidrs }
}

// ClientIPAffinity turns on client IP session affinity; a nil timeout
// leaves the affinity config unset, so the default timeout applies.
func ClientIPAffinity(timeout *int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		if timeout != nil {
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: timeout}}
		}
	}
}

// InternalLocal sets the internal traffic policy to Local.
func InternalLocal(s *corev1.Service) {
	s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
}

// ExternalLocal sets the external traffic policy to Local with the given
// health check node port.
func ExternalLocal(healthCheckNodePort int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = healthCheckNodePort
	}
}

// TrafficDistribution sets the service's traffic distribution.
func TrafficDistribution(d string) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.TrafficDistribution = ptr.To(d) }
}

// Label sets a label on the service, keeping the others.
func Label(k, v string) func(*corev1.Service) {
	return func(s *corev1.Service) {
		if s.Labels == nil {
			s.Labels = map[string]string{}
		}
		s.Labels[k] = v
	}
}

// EndpointSlice builds a slice of service svc, labelled with the service
// name as the EndpointSlice controller does.
func EndpointSlice(namespace, name, svc string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
}

// SlicePort is an EndpointSlice port.
func SlicePort(name string, proto corev1.Protocol, p int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: ptr.To(p)}
}

// Endpoint states, as the EndpointSlice controller writes the conditions.
const (
	Ready              = "ready"
	NotReady           = "not-ready"
	ServingTerminating = "serving-terminating"
	Terminating        = "terminating"
)

// Endpoint builds an endpoint with one address on a node (none if node is
// empty) in one of the endpoint states, changed by the options (hints).
// It panics on an unknown state, which is a mistake in the caller.
func Endpoint(addr, node, state string, opts ...func(*discoveryv1.Endpoint)) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}}
	if node != "" {
		e.NodeName = ptr.To(node)
	}
	var ready, serving, terminating bool
	switch state {
	case Ready:
		ready, serving = true, true
	case NotReady:
	case ServingTerminating:
		serving, terminating = true, true
	case Terminating:
		terminating = true
	default:
		panic("unknown endpoint state " + state)
	}
	e.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(serving), Terminating: ptr.To(terminating)}
	for _, o := range opts {
		o(&e)
	}
	return e
}

// ForZones adds zone hints to an endpoint.
func ForZones(zones ...string) func(*discoveryv1.Endpoint) {
	return func(e *discoveryv1.Endpoint) {
		if e.Hints == nil {
			e.Hints = &discoveryv1.EndpointHints{}
		}
		for _, z := range zones {
			e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: z})
		}
	}
}

// ForNodes adds node hints to an endpoint.
func ForNodes(nodes ...string) func(*discoveryv1.Endpoint) {
	return func(e *discoveryv1.Endpoint) {
		if e.Hints == nil {
			e.Hints = &discoveryv1.EndpointHints{}
		}
		for _, n := range nodes {
			e.Hints.ForNodes = append(e.Hints.ForNodes, discoveryv1.ForNode{Name: n})
		}
	}
}
