package conformance

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/datapath"
)

// Cases returns the conformance table.
func Cases() []Case {
	nodes := []*corev1.Node{
		node("node-a", "zone-1", "192.168.0.1"),
		node("node-b", "zone-2", "192.168.0.2"),
	}
	client := netip.MustParseAddrPort("10.0.0.99:40000")
	return []Case{
		{
			Name:  "clusterip-ready-endpoints",
			Nodes: nodes, Node: "node-a",
			Services: []*corev1.Service{service("default", "web", "10.96.0.10", corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})},
			Slices: []*discoveryv1.EndpointSlice{slice("default", "web", "web-1", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
				endpoint("10.244.1.5", "node-a", true), endpoint("10.244.2.5", "node-b", true), endpoint("10.244.2.6", "node-b", false))},
			Packets: []Packet{
				{Origin: Local, Packet: tcp(client, "10.96.0.10:80"), Want: datapath.Forward, Backends: addrPorts("10.244.1.5:8080", "10.244.2.5:8080")},
				{Origin: Local, Packet: tcp(client, "10.96.0.10:81"), Want: datapath.Pass},
			},
		},
		{
			Name:  "clusterip-no-endpoints-rejects",
			Nodes: nodes, Node: "node-a",
			Services: []*corev1.Service{service("default", "empty", "10.96.0.11", corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})},
			Packets: []Packet{
				{Origin: Local, Packet: tcp(client, "10.96.0.11:80"), Want: datapath.Refuse},
			},
		},
	}
}

func node(name, zone, addr string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: zone}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}},
	}
}

func service(ns, name, clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}, Ports: ports,
		},
	}
}

func slice(ns, svc, name string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func endpoint(addr, nodeName string, ready bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{addr},
		NodeName:   ptr.To(nodeName),
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(ready), Terminating: ptr.To(false)},
	}
}

func tcp(src netip.AddrPort, dst string) datapath.Packet {
	return datapath.Packet{Protocol: datapath.TCP, Src: src, Dst: netip.MustParseAddrPort(dst)}
}

func addrPorts(s ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddrPort(a)
	}
	return out
}
