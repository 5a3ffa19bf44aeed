package main

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

const demoNamespace = "default"

// demoService is one of the demo's services, as created.
type demoService struct {
	name      string
	kind      string // for people: ClusterIP, NodePort, LoadBalancer...
	proto     string // tcp or udp
	clusterIP netip.Addr
	port      uint16
	nodePort  uint16
	lbIP      netip.Addr
	// local: externalTrafficPolicy Local.
	local bool
	// backends are the pods that serve it.
	backends []*pod
}

// demoSpec is what createDemo makes: every kind of service the checks
// exercise, served by the backend pods.
type demoSpec struct {
	name     string
	kind     string
	typ      corev1.ServiceType
	proto    corev1.Protocol
	local    bool
	lbIP     string
	backends func(all []*pod) []*pod
}

var demoSpecs = []demoSpec{
	{name: "web", kind: "ClusterIP", typ: corev1.ServiceTypeClusterIP, proto: corev1.ProtocolTCP},
	{name: "dns", kind: "ClusterIP UDP", typ: corev1.ServiceTypeClusterIP, proto: corev1.ProtocolUDP},
	{name: "web-nodeport", kind: "NodePort", typ: corev1.ServiceTypeNodePort, proto: corev1.ProtocolTCP},
	{name: "web-local", kind: "NodePort eTP=Local", typ: corev1.ServiceTypeNodePort, proto: corev1.ProtocolTCP, local: true,
		backends: func(all []*pod) []*pod { return all[:1] }},
	{name: "web-lb", kind: "LoadBalancer", typ: corev1.ServiceTypeLoadBalancer, proto: corev1.ProtocolTCP, lbIP: "192.168.201.10"},
}

// createDemo creates the nodes' objects, then every demo service with its
// endpoints.
func createDemo(ctx context.Context, client kubernetes.Interface, nodes []*node, backends []*pod) ([]*demoService, error) {
	for _, n := range nodes {
		if _, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeAddr(n.index).String()}}},
		}, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("creating node %s: %w", n.name, err)
		}
	}
	var out []*demoService
	for _, spec := range demoSpecs {
		s, err := createService(ctx, client, spec, backends)
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", spec.name, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func createService(ctx context.Context, client kubernetes.Interface, spec demoSpec, all []*pod) (*demoService, error) {
	portName, port, target := "http", int32(80), int32(8080)
	if spec.proto == corev1.ProtocolUDP {
		portName, port, target = "dns", 53, 5353
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: spec.name, Namespace: demoNamespace},
		Spec: corev1.ServiceSpec{Type: spec.typ, Ports: []corev1.ServicePort{{
			Name: portName, Port: port, TargetPort: intstr.FromString(portName), Protocol: spec.proto}}},
	}
	if spec.local {
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}
	svc, err := client.CoreV1().Services(demoNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	if spec.lbIP != "" {
		// What a cloud controller would write.
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: spec.lbIP}}
		if svc, err = client.CoreV1().Services(demoNamespace).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
			return nil, err
		}
	}
	backends := all
	if spec.backends != nil {
		backends = spec.backends(all)
	}
	// What the EndpointSlice controller would write.
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: spec.name + "-1", Namespace: demoNamespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: spec.name, discoveryv1.LabelManagedBy: "local.spoke-proxy.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(target), Protocol: ptr.To(spec.proto)}},
	}
	for _, p := range backends {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{p.addr.String()}, NodeName: ptr.To(p.node.name), Zone: ptr.To("zone-a"),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		})
	}
	if _, err := client.DiscoveryV1().EndpointSlices(demoNamespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	ds := &demoService{name: spec.name, kind: spec.kind, proto: "tcp", port: uint16(port), local: spec.local, backends: backends}
	if spec.proto == corev1.ProtocolUDP {
		ds.proto = "udp"
	}
	if ds.clusterIP, err = netip.ParseAddr(svc.Spec.ClusterIP); err != nil {
		return nil, fmt.Errorf("cluster IP %q: %w", svc.Spec.ClusterIP, err)
	}
	ds.nodePort = uint16(svc.Spec.Ports[0].NodePort)
	if spec.lbIP != "" {
		ds.lbIP = netip.MustParseAddr(spec.lbIP)
	}
	return ds, nil
}
