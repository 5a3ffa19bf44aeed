package model_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/internal/kubeobj"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// service builds a ClusterIP service in namespace "ns" with the given
// cluster IPs, changed by the options.
func service(name string, clusterIPs []string, opts ...func(*corev1.Service)) *corev1.Service {
	return kubeobj.Service("ns", name, clusterIPs, opts...)
}

// endpointSlice builds a slice of service svc in namespace "ns".
func endpointSlice(name, svc string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return kubeobj.EndpointSlice("ns", name, svc, family, ports, eps...)
}

// withLabel sets a label on an EndpointSlice.
func withLabel(es *discoveryv1.EndpointSlice, key, value string) *discoveryv1.EndpointSlice {
	es.Labels[key] = value
	return es
}

// Short names for the shared Service and EndpointSlice builders.
var (
	port          = kubeobj.Port
	svcType       = kubeobj.Type
	externalIPs   = kubeobj.ExternalIPs
	ingress       = kubeobj.Ingress
	sourceRanges  = kubeobj.SourceRanges
	affinity      = kubeobj.ClientIPAffinity
	internalLocal = kubeobj.InternalLocal
	externalLocal = kubeobj.ExternalLocal
	label         = kubeobj.Label
	slicePort     = kubeobj.SlicePort
	endpoint      = kubeobj.Endpoint
	forZones      = kubeobj.ForZones
	forNodes      = kubeobj.ForNodes
)

// Endpoint states.
const (
	ready              = kubeobj.Ready
	notReady           = kubeobj.NotReady
	servingTerminating = kubeobj.ServingTerminating
	terminating        = kubeobj.Terminating
)

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
