package model

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// ServiceProxyNameLabel names the proxy that must serve a service; services
// naming another proxy are skipped.
const ServiceProxyNameLabel = "service.kubernetes.io/service-proxy-name"

// Limits that keep every view within what the agent's decoder accepts and
// what the Kubernetes API allows.
const (
	// MaxAddresses bounds each address list of a view (cluster, external
	// and load-balancer IPs, source ranges).
	MaxAddresses = 64
	// MaxPorts bounds the ports of a service.
	MaxPorts = 256
	// MaxEndpoints bounds the endpoints of one set of backends.
	MaxEndpoints = 10000
	// MaxSliceEndpoints and MaxSlicePorts are the API's limits for one
	// EndpointSlice; a slice beyond them is skipped whole.
	MaxSliceEndpoints = 1000
	MaxSlicePorts     = 100
	// DefaultAffinityTimeout is the ClientIP session affinity timeout when
	// the service sets none, in seconds; MaxAffinityTimeout is the API's
	// upper bound.
	DefaultAffinityTimeout = 10800
	MaxAffinityTimeout     = 86400
)

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
// just a Default. Views may share sub-messages: never modify them.
type Views struct {
	Default *spokev1.Service
	// ByZone holds the views of zones that topology hints make differ from
	// Default.
	ByZone map[string]*spokev1.Service
	// ByNode holds the views of nodes that host endpoints of a service with
	// a Local traffic policy, or that PreferSameNode hints name. Its keys
	// are the nodes whose zone the computation read.
	ByNode map[string]*spokev1.Service
	// Trigger is the earliest EndpointSlice last-change-trigger-time behind
	// this computation, zero when unknown. Compute never sets it: the
	// caller, which knows which change caused the computation, does.
	Trigger time.Time
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
	// Zones maps a node name to its zone ("" when unlabelled or unknown).
	// Compute reads it only for the nodes it returns in Views.ByNode.
	Zones map[string]string
}

// InputError is one part of an API object that the computation skipped
// because it is invalid. The rest of the object, and every other object,
// is still used.
type InputError struct {
	// Kind is the object's kind: "Service" or "EndpointSlice".
	Kind            string
	Namespace, Name string
	// Err says what was skipped and why.
	Err error
}

func (e *InputError) Error() string {
	return fmt.Sprintf("%s %s/%s: %v", e.Kind, e.Namespace, e.Name, e.Err)
}

func (e *InputError) Unwrap() error { return e.Err }

// Skipped reports why a service is not proxied, or "" if it is.
func Skipped(svc *corev1.Service, opts Options) string {
	switch {
	case svc.Spec.Type == corev1.ServiceTypeExternalName:
		return "ExternalName service"
	case svc.Spec.ClusterIP == corev1.ClusterIPNone,
		len(svc.Spec.ClusterIPs) > 0 && svc.Spec.ClusterIPs[0] == corev1.ClusterIPNone:
		return "headless service"
	case svc.Spec.ClusterIP == "" && len(svc.Spec.ClusterIPs) == 0:
		return "no cluster IP"
	}
	if name, ok := svc.Labels[ServiceProxyNameLabel]; ok && name != opts.ProxyName {
		return fmt.Sprintf("served by proxy %q", name)
	}
	return ""
}

// Compute returns the views of a service given every EndpointSlice that
// belongs to it. Invalid parts of the input (an address that is not
// canonical, a port out of range, a slice over the API's limits) are
// skipped and returned as *InputError; they never stop the rest of the
// service from being computed. A nil or skipped service yields empty views.
//
// The cost is proportional to the service's endpoints and to the zones and
// nodes its hints and Local policies name, never to the cluster's size.
func Compute(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, topo Topology, opts Options) (Views, []error) {
	if svc == nil || Skipped(svc, opts) != "" {
		return Views{}, nil
	}
	var errs []error
	spec := parseService(svc, func(err error) {
		errs = append(errs, &InputError{Kind: "Service", Namespace: svc.Namespace, Name: svc.Name, Err: err})
	})
	if spec == nil {
		return Views{}, errs
	}
	members := parseSlices(endpointSlices, spec.families, func(es *discoveryv1.EndpointSlice, err error) {
		errs = append(errs, &InputError{Kind: "EndpointSlice", Namespace: es.Namespace, Name: es.Name, Err: err})
	})
	ports := make([]*portBackends, len(spec.ports))
	for i := range spec.ports {
		ports[i] = newPortBackends(&spec.ports[i], members, spec.usesLocal())
	}
	views := assemble(spec, ports, topo)
	for _, p := range ports {
		if p.truncated {
			errs = append(errs, &InputError{Kind: "Service", Namespace: svc.Namespace, Name: svc.Name,
				Err: fmt.Errorf("port %q: more than %d endpoints; the view keeps the first %d", p.spec.name, MaxEndpoints, MaxEndpoints)})
		}
	}
	return views, errs
}
