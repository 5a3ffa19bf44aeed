package conformance

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/kubeobj"
)

// The cluster every case runs in: four nodes in three zones (node-a and
// node-d share zone-1), and node-e without a zone. Pods on node-a are in
// 10.244.1.0/24 and fd00:244:1::/64, on node-b in .2, and so on; cluster
// IPs are in 10.96.0.0/16 and fd00:96::/112; load-balancer IPs in
// 198.51.100.0/24 and 2001:db8:51::/64; external IPs in 192.0.2.0/24 and
// 2001:db8:2::/64. Unless a case says otherwise, the node under test is
// node-a.
var cluster = []*corev1.Node{
	clusterNode("node-a", "zone-1", "192.168.0.1", "fd00:192::1"),
	clusterNode("node-b", "zone-2", "192.168.0.2", "fd00:192::2"),
	clusterNode("node-c", "zone-3", "192.168.0.3", "fd00:192::3"),
	clusterNode("node-d", "zone-1", "192.168.0.4", "fd00:192::4"),
	clusterNode("node-e", "", "192.168.0.5", "fd00:192::5"),
}

// Sources of packets: a pod on node-a (for packets that start on the node
// under test) and a client outside the cluster.
var (
	podSrc     = netip.MustParseAddrPort("10.244.1.100:40000")
	podSrc6    = netip.MustParseAddrPort("[fd00:244:1::100]:40000")
	clientSrc  = netip.MustParseAddrPort("203.0.113.50:40000")
	clientSrc6 = netip.MustParseAddrPort("[2001:db8:99::50]:40000")
)

// Cases returns the conformance table.
func Cases() []Case {
	var cases []Case
	for _, group := range [][]Case{
		clusterIPCases(), conditionCases(), nodePortCases(), loadBalancerCases(), externalIPCases(),
		affinityCases(), internalLocalCases(), externalLocalCases(), topologyCases(), skipCases(), invalidInputCases(),
	} {
		cases = append(cases, group...)
	}
	for i := range cases {
		if cases[i].Nodes == nil {
			cases[i].Nodes = cluster
		}
		if cases[i].Node == "" {
			cases[i].Node = "node-a"
		}
	}
	return cases
}

var (
	http    = []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}
	web     = []string{"10.96.0.10"}
	web6    = []string{"fd00:96::10"}
	webDual = []string{"10.96.0.10", "fd00:96::10"}
)

// spread is the usual endpoint slice of service "web": one ready endpoint
// on node-a, one on node-b and one that is not ready on node-c.
func spread() []*discoveryv1.EndpointSlice {
	return []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
		ep("10.244.1.5", "node-a", ready), ep("10.244.2.5", "node-b", ready), ep("10.244.3.5", "node-c", notReady))}
}

func spread6() []*discoveryv1.EndpointSlice {
	return []*discoveryv1.EndpointSlice{slice("web", "web-6", discoveryv1.AddressTypeIPv6, http,
		ep("fd00:244:1::5", "node-a", ready), ep("fd00:244:2::5", "node-b", ready), ep("fd00:244:3::5", "node-c", notReady))}
}

// remoteOnly has ready endpoints on node-b and node-c only.
func remoteOnly() []*discoveryv1.EndpointSlice {
	return []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
		ep("10.244.2.5", "node-b", ready), ep("10.244.3.5", "node-c", ready))}
}

func clusterIPCases() []Case {
	return []Case{{
		Name:     "clusterip-ready-endpoints",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices:   spread(),
		Packets: []Packet{
			fromPod("10.96.0.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromPod("10.96.0.10:81", datapath.Pass),
		},
	}, {
		Name:     "clusterip-ready-endpoints-ipv6",
		Services: svcs(service("web", web6, tcpPort("http", 80, 0))),
		Slices:   spread6(),
		Packets: []Packet{
			fromPod("[fd00:96::10]:80", datapath.Forward, "[fd00:244:1::5]:8080", "[fd00:244:2::5]:8080"),
			fromPod("[fd00:96::10]:81", datapath.Pass),
		},
	}, {
		Name:     "clusterip-no-endpoints-rejects",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Packets:  []Packet{fromPod("10.96.0.10:80", datapath.Refuse)},
	}, {
		Name:     "clusterip-no-endpoints-rejects-ipv6",
		Services: svcs(service("web", web6, tcpPort("http", 80, 0))),
		Packets:  []Packet{fromPod("[fd00:96::10]:80", datapath.Refuse)},
	}, {
		Name:     "clusterip-from-outside-the-node",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices:   spread(),
		Packets:  []Packet{fromOutside("10.96.0.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080")},
	}, {
		Name:     "dual-stack-each-family-reaches-its-own-endpoints",
		Services: svcs(service("web", webDual, tcpPort("http", 80, 0))),
		Slices:   append(spread(), spread6()...),
		Packets: []Packet{
			fromPod("10.96.0.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromPod("[fd00:96::10]:80", datapath.Forward, "[fd00:244:1::5]:8080", "[fd00:244:2::5]:8080"),
		},
	}, {
		Name:     "dual-stack-family-without-endpoints-rejects",
		Services: svcs(service("web", webDual, tcpPort("http", 80, 0))),
		Slices:   spread(),
		Packets: []Packet{
			fromPod("10.96.0.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromPod("[fd00:96::10]:80", datapath.Refuse),
		},
	}, {
		Name:     "udp-port",
		Services: svcs(service("dns", []string{"10.96.0.53"}, port("dns", corev1.ProtocolUDP, 53, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("dns", "dns-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("dns", corev1.ProtocolUDP, 5353)}, ep("10.244.2.53", "node-b", ready))},
		Packets: []Packet{
			withProto(fromPod("10.96.0.53:53", datapath.Forward, "10.244.2.53:5353"), datapath.UDP),
			fromPod("10.96.0.53:53", datapath.Pass),
		},
	}, {
		Name:     "udp-port-ipv6",
		Services: svcs(service("dns", []string{"fd00:96::53"}, port("dns", corev1.ProtocolUDP, 53, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("dns", "dns-6", discoveryv1.AddressTypeIPv6,
			[]discoveryv1.EndpointPort{slicePort("dns", corev1.ProtocolUDP, 5353)}, ep("fd00:244:2::53", "node-b", ready))},
		Packets: []Packet{withProto(fromPod("[fd00:96::53]:53", datapath.Forward, "[fd00:244:2::53]:5353"), datapath.UDP)},
	}, {
		Name:     "sctp-port",
		Services: svcs(service("sig", []string{"10.96.0.38"}, port("sig", corev1.ProtocolSCTP, 3868, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("sig", "sig-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("sig", corev1.ProtocolSCTP, 3868)}, ep("10.244.2.38", "node-b", ready))},
		Packets: []Packet{
			withProto(fromPod("10.96.0.38:3868", datapath.Forward, "10.244.2.38:3868"), datapath.SCTP),
			withProto(fromPod("10.96.0.38:3868", datapath.Pass), datapath.UDP),
			// From the node itself (host network).
			from(withProto(fromPod("10.96.0.38:3868", datapath.Forward, "10.244.2.38:3868"), datapath.SCTP), "192.168.0.1:40000"),
		},
	}, {
		Name:     "hairpin",
		Services: svcs(service("sig", []string{"10.96.0.38"}, port("sig", corev1.ProtocolSCTP, 3868, 0), port("web", corev1.ProtocolTCP, 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("sig", "sig-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("sig", corev1.ProtocolSCTP, 3869), slicePort("web", corev1.ProtocolTCP, 8080)}, ep("10.244.1.38", "node-a", ready))},
		Packets: []Packet{
			from(withProto(fromPod("10.96.0.38:3868", datapath.Forward, "10.244.1.38:3869"), datapath.SCTP), "10.244.1.38:40000"),
			from(fromPod("10.96.0.38:80", datapath.Forward, "10.244.1.38:8080"), "10.244.1.38:40000"),
		},
	}, {
		Name:     "sctp-port-local-backend",
		Services: svcs(service("sig", []string{"10.96.0.38"}, port("sig", corev1.ProtocolSCTP, 3868, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("sig", "sig-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("sig", corev1.ProtocolSCTP, 3869)}, ep("10.244.1.38", "node-a", ready))},
		Packets: []Packet{
			withProto(fromPod("10.96.0.38:3868", datapath.Forward, "10.244.1.38:3869"), datapath.SCTP),
			// From the node itself (host network).
			from(withProto(fromPod("10.96.0.38:3868", datapath.Forward, "10.244.1.38:3869"), datapath.SCTP), "192.168.0.1:40001"),
		},
	}, {
		Name: "tcp-and-udp-on-one-port-number",
		Services: svcs(service("dns", []string{"10.96.0.53"}, port("dns", corev1.ProtocolUDP, 53, 0),
			port("dns-tcp", corev1.ProtocolTCP, 53, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("dns", "dns-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("dns", corev1.ProtocolUDP, 5353), slicePort("dns-tcp", corev1.ProtocolTCP, 5354)},
			ep("10.244.2.53", "node-b", ready))},
		Packets: []Packet{
			withProto(fromPod("10.96.0.53:53", datapath.Forward, "10.244.2.53:5353"), datapath.UDP),
			fromPod("10.96.0.53:53", datapath.Forward, "10.244.2.53:5354"),
		},
	}, {
		Name:     "multi-port-service",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), tcpPort("https", 443, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080), slicePort("https", corev1.ProtocolTCP, 8443)},
			ep("10.244.2.5", "node-b", ready))},
		Packets: []Packet{
			fromPod("10.96.0.10:80", datapath.Forward, "10.244.2.5:8080"),
			fromPod("10.96.0.10:443", datapath.Forward, "10.244.2.5:8443"),
		},
	}, {
		Name:     "named-target-port-resolved-per-endpoint",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{
			slice("web", "web-1", discoveryv1.AddressTypeIPv4, http, ep("10.244.1.5", "node-a", ready)),
			slice("web", "web-2", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 9090)},
				ep("10.244.2.5", "node-b", ready)),
		},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.1.5:8080", "10.244.2.5:9090"),
	}, {
		Name:     "endpoints-across-slices",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{
			slice("web", "web-1", discoveryv1.AddressTypeIPv4, http, ep("10.244.1.5", "node-a", ready)),
			slice("web", "web-2", discoveryv1.AddressTypeIPv4, http, ep("10.244.2.5", "node-b", ready)),
			slice("web", "web-3", discoveryv1.AddressTypeIPv4, http, ep("10.244.3.5", "node-c", ready)),
		},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080", "10.244.3.5:8080"),
	}, {
		Name:     "duplicate-endpoint-across-slices",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{
			slice("web", "web-1", discoveryv1.AddressTypeIPv4, http, ep("10.244.2.5", "node-b", notReady)),
			slice("web", "web-2", discoveryv1.AddressTypeIPv4, http, ep("10.244.2.5", "node-b", ready)),
		},
		Packets: []Packet{fromPod("10.96.0.10:80", datapath.Forward, "10.244.2.5:8080")},
	}, {
		Name:     "unrelated-address-passes",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices:   spread(),
		Packets:  []Packet{fromPod("10.96.0.11:80", datapath.Pass), fromPod("10.244.2.5:8080", datapath.Pass)},
	}}
}

func conditionCases() []Case {
	return []Case{{
		Name:     "not-ready-endpoints-take-no-connections",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.2.5", "node-b", ready), ep("10.244.2.6", "node-b", notReady), ep("10.244.2.7", "node-b", notReady))},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.2.5:8080"),
	}, {
		Name:     "terminating-endpoints-take-no-new-connections",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.2.5", "node-b", ready), ep("10.244.2.6", "node-b", servingTerminating), ep("10.244.2.7", "node-b", terminating))},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.2.5:8080"),
	}, {
		Name:     "serving-terminating-fallback",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.2.6", "node-b", servingTerminating), ep("10.244.2.7", "node-b", terminating), ep("10.244.2.8", "node-b", notReady))},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.2.6:8080"),
	}, {
		Name:     "serving-terminating-fallback-ipv6",
		Services: svcs(service("web", web6, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-6", discoveryv1.AddressTypeIPv6, http,
			ep("fd00:244:2::6", "node-b", servingTerminating), ep("fd00:244:2::7", "node-b", terminating))},
		Packets: manyFromPod("[fd00:96::10]:80", 4, datapath.Forward, "[fd00:244:2::6]:8080"),
	}, {
		Name:     "terminating-not-serving-only-rejects",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.2.7", "node-b", terminating), ep("10.244.2.8", "node-b", notReady))},
		Packets: []Packet{fromPod("10.96.0.10:80", datapath.Refuse)},
	}, {
		Name:     "terminating-fallback-is-per-family",
		Services: svcs(service("web", webDual, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{
			slice("web", "web-1", discoveryv1.AddressTypeIPv4, http, ep("10.244.2.6", "node-b", servingTerminating)),
			slice("web", "web-6", discoveryv1.AddressTypeIPv6, http, ep("fd00:244:2::5", "node-b", ready), ep("fd00:244:2::6", "node-b", servingTerminating)),
		},
		Packets: []Packet{
			fromPod("10.96.0.10:80", datapath.Forward, "10.244.2.6:8080"),
			fromPod("[fd00:96::10]:80", datapath.Forward, "[fd00:244:2::5]:8080"),
		},
	}}
}

func nodePortCases() []Case {
	nodePortWeb := func(ips []string) *corev1.Service {
		return service("web", ips, serviceType(corev1.ServiceTypeNodePort), tcpPort("http", 80, 30080))
	}
	return []Case{{
		Name:     "nodeport-on-node-address",
		Services: svcs(nodePortWeb(web)),
		Slices:   spread(),
		Packets: []Packet{
			fromOutside("192.168.0.1:30080", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromOutside("192.168.0.1:30081", datapath.Pass),
			fromOutside("10.96.0.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
		},
	}, {
		Name:     "nodeport-on-node-address-ipv6",
		Services: svcs(nodePortWeb(web6)),
		Slices:   spread6(),
		Packets:  []Packet{fromOutside("[fd00:192::1]:30080", datapath.Forward, "[fd00:244:1::5]:8080", "[fd00:244:2::5]:8080")},
	}, {
		Name:     "nodeport-not-on-other-nodes-addresses",
		Services: svcs(nodePortWeb(web)),
		Slices:   spread(),
		Packets:  []Packet{fromOutside("192.168.0.2:30080", datapath.Pass)},
	}, {
		Name:     "nodeport-from-the-node",
		Services: svcs(nodePortWeb(webDual)),
		Slices:   append(spread(), spread6()...),
		Packets: []Packet{
			fromPod("192.168.0.1:30080", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromPod("[fd00:192::1]:30080", datapath.Forward, "[fd00:244:1::5]:8080", "[fd00:244:2::5]:8080"),
		},
	}, {
		Name:     "nodeport-no-endpoints-rejects",
		Services: svcs(nodePortWeb(web)),
		Packets:  []Packet{fromOutside("192.168.0.1:30080", datapath.Refuse)},
	}, {
		Name: "nodeport-udp",
		Services: svcs(service("dns", []string{"10.96.0.53"}, serviceType(corev1.ServiceTypeNodePort),
			port("dns", corev1.ProtocolUDP, 53, 30053))),
		Slices: []*discoveryv1.EndpointSlice{slice("dns", "dns-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("dns", corev1.ProtocolUDP, 5353)}, ep("10.244.2.53", "node-b", ready))},
		Packets: []Packet{
			withProto(fromOutside("192.168.0.1:30053", datapath.Forward, "10.244.2.53:5353"), datapath.UDP),
			fromOutside("192.168.0.1:30053", datapath.Pass),
		},
	}, {
		Name: "nodeport-sctp",
		Services: svcs(service("sig", []string{"10.96.0.38"}, serviceType(corev1.ServiceTypeNodePort),
			port("sig", corev1.ProtocolSCTP, 3868, 30868))),
		Slices: []*discoveryv1.EndpointSlice{slice("sig", "sig-1", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("sig", corev1.ProtocolSCTP, 3868)}, ep("10.244.1.38", "node-a", ready))},
		Packets: []Packet{
			withProto(fromOutside("192.168.0.1:30868", datapath.Forward, "10.244.1.38:3868"), datapath.SCTP),
			fromOutside("192.168.0.1:30868", datapath.Pass),
		},
	}, {
		Name:     "clusterip-service-has-no-nodeport",
		Services: svcs(service("web", web, tcpPort("http", 80, 30080))),
		Slices:   spread(),
		Packets:  []Packet{fromOutside("192.168.0.1:30080", datapath.Pass)},
	}}
}

func loadBalancerCases() []Case {
	lb := func(ips []string, opts ...func(*corev1.Service)) *corev1.Service {
		base := []func(*corev1.Service){serviceType(corev1.ServiceTypeLoadBalancer), tcpPort("http", 80, 30080)}
		return service("web", ips, append(base, opts...)...)
	}
	return []Case{{
		Name:     "loadbalancer-ingress-ip",
		Services: svcs(lb(web, ingress("198.51.100.10", ""))),
		Slices:   spread(),
		Packets: []Packet{
			fromOutside("198.51.100.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromOutside("198.51.100.10:81", datapath.Pass),
			fromOutside("192.168.0.1:30080", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromPod("198.51.100.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
		},
	}, {
		Name:     "loadbalancer-ingress-ip-ipv6",
		Services: svcs(lb(web6, ingress("2001:db8:51::10", ""))),
		Slices:   spread6(),
		Packets:  []Packet{fromOutside("[2001:db8:51::10]:80", datapath.Forward, "[fd00:244:1::5]:8080", "[fd00:244:2::5]:8080")},
	}, {
		Name:     "loadbalancer-ipmode-proxy-is-not-short-circuited",
		Services: svcs(lb(web, ingress("198.51.100.10", corev1.LoadBalancerIPModeProxy), ingress("198.51.100.11", corev1.LoadBalancerIPModeVIP))),
		Slices:   spread(),
		Packets: []Packet{
			fromOutside("198.51.100.10:80", datapath.Pass),
			fromOutside("198.51.100.11:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromOutside("192.168.0.1:30080", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
		},
	}, {
		Name:     "loadbalancer-hostname-ingress-gives-no-address",
		Services: svcs(lb(web, ingressHostname("lb.example.com"))),
		Slices:   spread(),
		Packets:  []Packet{fromOutside("192.168.0.1:30080", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080")},
	}, {
		Name:     "loadbalancer-source-ranges-allow",
		Services: svcs(lb(web, ingress("198.51.100.10", ""), sourceRanges("203.0.113.0/24"))),
		Slices:   spread(),
		Packets:  []Packet{fromOutside("198.51.100.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080")},
	}, {
		Name:     "loadbalancer-source-ranges-deny",
		Services: svcs(lb(web, ingress("198.51.100.10", ""), sourceRanges("192.0.2.0/24", "198.18.0.0/15"))),
		Slices:   spread(),
		Packets:  []Packet{fromOutside("198.51.100.10:80", datapath.Discard), fromPod("198.51.100.10:80", datapath.Discard)},
	}, {
		Name:     "loadbalancer-source-ranges-ipv6",
		Services: svcs(lb(web6, ingress("2001:db8:51::10", ""), sourceRanges("2001:db8:99::/48"))),
		Slices:   spread6(),
		Packets: []Packet{
			fromOutside("[2001:db8:51::10]:80", datapath.Forward, "[fd00:244:1::5]:8080", "[fd00:244:2::5]:8080"),
			from(fromOutside("[2001:db8:51::10]:80", datapath.Discard), "[2001:db8:98::1]:40000"),
		},
	}, {
		Name:     "loadbalancer-source-ranges-canonicalised",
		Services: svcs(lb(web, ingress("198.51.100.10", ""), sourceRanges(" 203.0.113.77/24 "))),
		Slices:   spread(),
		Packets: []Packet{
			fromOutside("198.51.100.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			from(fromOutside("198.51.100.10:80", datapath.Discard), "203.0.114.1:40000"),
		},
	}, {
		Name:     "loadbalancer-source-ranges-do-not-restrict-nodeport",
		Services: svcs(lb(web, ingress("198.51.100.10", ""), sourceRanges("192.0.2.0/24"))),
		Slices:   spread(),
		Packets: []Packet{
			fromOutside("198.51.100.10:80", datapath.Discard),
			fromOutside("192.168.0.1:30080", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromOutside("10.96.0.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
		},
	}, {
		Name:     "loadbalancer-no-endpoints-rejects",
		Services: svcs(lb(web, ingress("198.51.100.10", ""))),
		Packets:  []Packet{fromOutside("198.51.100.10:80", datapath.Refuse), fromOutside("192.168.0.1:30080", datapath.Refuse)},
	}, {
		Name: "loadbalancer-without-node-ports",
		Services: svcs(service("web", web, serviceType(corev1.ServiceTypeLoadBalancer), tcpPort("http", 80, 0),
			ingress("198.51.100.10", ""), func(s *corev1.Service) { s.Spec.AllocateLoadBalancerNodePorts = ptr.To(false) })),
		Slices: spread(),
		Packets: []Packet{
			fromOutside("198.51.100.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromOutside("192.168.0.1:30080", datapath.Pass),
		},
	}}
}

func externalIPCases() []Case {
	return []Case{{
		Name:     "external-ip",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), externalIPs("192.0.2.10"))),
		Slices:   spread(),
		Packets: []Packet{
			fromOutside("192.0.2.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromPod("192.0.2.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromOutside("192.0.2.10:81", datapath.Pass),
		},
	}, {
		Name:     "external-ip-ipv6",
		Services: svcs(service("web", web6, tcpPort("http", 80, 0), externalIPs("2001:db8:2::10"))),
		Slices:   spread6(),
		Packets:  []Packet{fromOutside("[2001:db8:2::10]:80", datapath.Forward, "[fd00:244:1::5]:8080", "[fd00:244:2::5]:8080")},
	}, {
		Name:     "external-ip-no-endpoints-rejects",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), externalIPs("192.0.2.10"))),
		Packets:  []Packet{fromOutside("192.0.2.10:80", datapath.Refuse)},
	}, {
		Name:     "external-ip-of-a-family-the-service-lacks-is-ignored",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), externalIPs("192.0.2.10", "2001:db8:2::10"))),
		Slices:   spread(),
		Packets: []Packet{
			fromOutside("192.0.2.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromOutside("[2001:db8:2::10]:80", datapath.Pass),
		},
	}}
}

func affinityCases() []Case {
	three := func(family discoveryv1.AddressType) []*discoveryv1.EndpointSlice {
		if family == discoveryv1.AddressTypeIPv6 {
			return []*discoveryv1.EndpointSlice{slice("web", "web-6", family, http,
				ep("fd00:244:1::5", "node-a", ready), ep("fd00:244:2::5", "node-b", ready), ep("fd00:244:3::5", "node-c", ready))}
		}
		return []*discoveryv1.EndpointSlice{slice("web", "web-1", family, http,
			ep("10.244.1.5", "node-a", ready), ep("10.244.2.5", "node-b", ready), ep("10.244.3.5", "node-c", ready))}
	}
	all4 := []string{"10.244.1.5:8080", "10.244.2.5:8080", "10.244.3.5:8080"}
	all6 := []string{"[fd00:244:1::5]:8080", "[fd00:244:2::5]:8080", "[fd00:244:3::5]:8080"}
	return []Case{{
		Name:     "client-ip-affinity",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), clientIPAffinity(nil))),
		Slices:   three(discoveryv1.AddressTypeIPv4),
		Packets:  stickyFromPod("10.96.0.10:80", 8, all4...),
	}, {
		Name:     "client-ip-affinity-ipv6",
		Services: svcs(service("web", web6, tcpPort("http", 80, 0), clientIPAffinity(ptr.To[int32](60)))),
		Slices:   three(discoveryv1.AddressTypeIPv6),
		Packets:  stickyFromPod("[fd00:96::10]:80", 8, all6...),
	}, {
		Name: "client-ip-affinity-on-nodeport",
		Services: svcs(service("web", web, serviceType(corev1.ServiceTypeNodePort), tcpPort("http", 80, 30080),
			clientIPAffinity(ptr.To[int32](300)))),
		Slices: three(discoveryv1.AddressTypeIPv4),
		Packets: func() []Packet {
			var ps []Packet
			for i := range 8 {
				p := from(fromOutside("192.168.0.1:30080", datapath.Forward, all4...), fmt.Sprintf("203.0.113.50:%d", 41000+i))
				p.Sticky = i > 0
				ps = append(ps, p)
			}
			return ps
		}(),
	}}
}

func internalLocalCases() []Case {
	local := func(ips []string, opts ...func(*corev1.Service)) *corev1.Service {
		return service("web", ips, append([]func(*corev1.Service){internalLocal}, opts...)...)
	}
	http80 := tcpPort("http", 80, 0)
	return []Case{{
		Name:     "internal-local-uses-the-node-endpoint",
		Services: svcs(local(web, http80)),
		Slices:   spread(),
		Packets:  manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.1.5:8080"),
	}, {
		Name:     "internal-local-ipv6",
		Services: svcs(local(web6, http80)),
		Slices:   spread6(),
		Packets:  manyFromPod("[fd00:96::10]:80", 4, datapath.Forward, "[fd00:244:1::5]:8080"),
	}, {
		Name:     "internal-local-without-local-endpoint-drops",
		Services: svcs(local(web, http80)),
		Slices:   remoteOnly(),
		Packets:  []Packet{fromPod("10.96.0.10:80", datapath.Discard)},
	}, {
		Name:     "internal-local-without-endpoints-rejects",
		Services: svcs(local(web, http80)),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.1.5", "node-a", notReady))},
		Packets: []Packet{fromPod("10.96.0.10:80", datapath.Refuse)},
	}, {
		Name:     "internal-local-terminating-fallback",
		Services: svcs(local(web, http80)),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.1.6", "node-a", servingTerminating), ep("10.244.2.5", "node-b", ready))},
		Packets: []Packet{fromPod("10.96.0.10:80", datapath.Forward, "10.244.1.6:8080")},
	}, {
		Name:     "internal-local-other-node",
		Node:     "node-b",
		Services: svcs(local(web, http80)),
		Slices:   spread(),
		Packets:  manyFromPod("10.96.0.10:80", 4, datapath.Forward, "10.244.2.5:8080"),
	}, {
		Name:     "internal-local-external-cluster-nodeport",
		Services: svcs(local(web, serviceType(corev1.ServiceTypeNodePort), tcpPort("http", 80, 30080))),
		Slices:   remoteOnly(),
		Packets: []Packet{
			fromPod("10.96.0.10:80", datapath.Discard),
			fromOutside("192.168.0.1:30080", datapath.Forward, "10.244.2.5:8080", "10.244.3.5:8080"),
			fromPod("192.168.0.1:30080", datapath.Forward, "10.244.2.5:8080", "10.244.3.5:8080"),
		},
	}}
}

func externalLocalCases() []Case {
	lbLocal := func(ips []string, lbIP string, opts ...func(*corev1.Service)) *corev1.Service {
		base := []func(*corev1.Service){serviceType(corev1.ServiceTypeLoadBalancer), tcpPort("http", 80, 30080),
			ingress(lbIP, ""), externalLocal(32000)}
		return service("web", ips, append(base, opts...)...)
	}
	return []Case{{
		Name:     "external-local-nodeport-uses-the-node-endpoint",
		Services: svcs(lbLocal(web, "198.51.100.10")),
		Slices:   spread(),
		Packets: []Packet{
			fromOutside("192.168.0.1:30080", datapath.Forward, "10.244.1.5:8080"),
			fromOutside("198.51.100.10:80", datapath.Forward, "10.244.1.5:8080"),
			fromOutside("192.168.0.1:30080", datapath.Forward, "10.244.1.5:8080"),
		},
	}, {
		Name:     "external-local-ipv6",
		Services: svcs(lbLocal(web6, "2001:db8:51::10")),
		Slices:   spread6(),
		Packets: []Packet{
			fromOutside("[2001:db8:51::10]:80", datapath.Forward, "[fd00:244:1::5]:8080"),
			fromOutside("[fd00:192::1]:30080", datapath.Forward, "[fd00:244:1::5]:8080"),
		},
	}, {
		Name:     "external-local-without-local-endpoint-drops",
		Services: svcs(lbLocal(web, "198.51.100.10")),
		Slices:   remoteOnly(),
		Packets: []Packet{
			fromOutside("192.168.0.1:30080", datapath.Discard),
			fromOutside("198.51.100.10:80", datapath.Discard),
		},
	}, {
		Name:     "external-local-traffic-from-the-node-reaches-every-endpoint",
		Services: svcs(lbLocal(web, "198.51.100.10")),
		Slices:   remoteOnly(),
		Packets: []Packet{
			fromPod("192.168.0.1:30080", datapath.Forward, "10.244.2.5:8080", "10.244.3.5:8080"),
			fromPod("198.51.100.10:80", datapath.Forward, "10.244.2.5:8080", "10.244.3.5:8080"),
		},
	}, {
		Name:     "external-local-clusterip-reaches-every-endpoint",
		Services: svcs(lbLocal(web, "198.51.100.10")),
		Slices:   remoteOnly(),
		Packets:  manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.2.5:8080", "10.244.3.5:8080"),
	}, {
		Name:     "external-local-without-endpoints-rejects",
		Services: svcs(lbLocal(web, "198.51.100.10")),
		Packets: []Packet{
			fromOutside("198.51.100.10:80", datapath.Refuse),
			fromOutside("192.168.0.1:30080", datapath.Refuse),
			fromPod("198.51.100.10:80", datapath.Refuse),
		},
	}, {
		Name: "external-local-external-ip",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), externalIPs("192.0.2.10"),
			externalLocal(0))),
		Slices: spread(),
		Packets: []Packet{
			fromOutside("192.0.2.10:80", datapath.Forward, "10.244.1.5:8080"),
			fromPod("10.96.0.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
		},
	}, {
		Name:     "both-policies-local-from-the-node",
		Services: svcs(lbLocal(web, "198.51.100.10", internalLocal)),
		Slices:   remoteOnly(),
		Packets: []Packet{
			fromPod("10.96.0.10:80", datapath.Discard),
			fromOutside("192.168.0.1:30080", datapath.Discard),
			fromPod("192.168.0.1:30080", datapath.Forward, "10.244.2.5:8080", "10.244.3.5:8080"),
			fromPod("198.51.100.10:80", datapath.Forward, "10.244.2.5:8080", "10.244.3.5:8080"),
		},
	}}
}

func topologyCases() []Case {
	closeBy := func(ips []string) *corev1.Service {
		return service("web", ips, tcpPort("http", 80, 0), trafficDistribution(corev1.ServiceTrafficDistributionPreferClose))
	}
	sameNode := func() *corev1.Service {
		return service("web", web, tcpPort("http", 80, 0), trafficDistribution(corev1.ServiceTrafficDistributionPreferSameNode))
	}
	// zoned has one ready endpoint per zone, hinted for its zone.
	zoned := []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
		ep("10.244.1.5", "node-a", ready, forZones("zone-1")), ep("10.244.2.5", "node-b", ready, forZones("zone-2")),
		ep("10.244.2.6", "node-b", ready, forZones("zone-2")))}
	all := []string{"10.244.1.5:8080", "10.244.2.5:8080", "10.244.2.6:8080"}
	// perNode has what the EndpointSlice controller writes for
	// PreferSameNode: each endpoint hinted for its node and its zone.
	perNode := []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
		ep("10.244.1.5", "node-a", ready, forZones("zone-1"), forNodes("node-a")),
		ep("10.244.4.5", "node-d", ready, forZones("zone-1"), forNodes("node-d")),
		ep("10.244.2.5", "node-b", ready, forZones("zone-2"), forNodes("node-b")))}
	return []Case{{
		Name:     "zone-hints-keep-traffic-in-zone",
		Services: svcs(closeBy(web)),
		Slices:   zoned,
		Packets:  manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.1.5:8080"),
	}, {
		Name:     "zone-hints-other-zone",
		Node:     "node-b",
		Services: svcs(closeBy(web)),
		Slices:   zoned,
		Packets:  manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.2.5:8080", "10.244.2.6:8080"),
	}, {
		Name:     "zone-hints-not-covering-the-zone-use-every-endpoint",
		Node:     "node-c",
		Services: svcs(closeBy(web)),
		Slices:   zoned,
		Packets:  manyFromPod("10.96.0.10:80", 8, datapath.Forward, all...),
	}, {
		Name:     "zone-hints-node-without-zone-uses-every-endpoint",
		Node:     "node-e",
		Services: svcs(closeBy(web)),
		Slices:   zoned,
		Packets:  manyFromPod("10.96.0.10:80", 8, datapath.Forward, all...),
	}, {
		Name:     "zone-hints-missing-on-one-endpoint-use-every-endpoint",
		Services: svcs(closeBy(web)),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.1.5", "node-a", ready, forZones("zone-1")), ep("10.244.2.5", "node-b", ready))},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
	}, {
		Name:     "zone-hints-ipv6",
		Services: svcs(closeBy(web6)),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-6", discoveryv1.AddressTypeIPv6, http,
			ep("fd00:244:1::5", "node-a", ready, forZones("zone-1")), ep("fd00:244:2::5", "node-b", ready, forZones("zone-2")))},
		Packets: manyFromPod("[fd00:96::10]:80", 8, datapath.Forward, "[fd00:244:1::5]:8080"),
	}, {
		Name:     "zone-hints-ignored-when-only-terminating-endpoints-serve",
		Services: svcs(closeBy(web)),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.2.5", "node-b", servingTerminating, forZones("zone-2")), ep("10.244.3.5", "node-c", servingTerminating, forZones("zone-3")))},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.2.5:8080", "10.244.3.5:8080"),
	}, {
		Name:     "prefer-same-node-uses-the-node-endpoint",
		Services: svcs(sameNode()),
		Slices:   perNode,
		Packets:  manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.1.5:8080"),
	}, {
		Name:     "prefer-same-node-unhinted-node-uses-its-zone",
		Node:     "node-c",
		Services: svcs(sameNode()),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.1.5", "node-a", ready, forZones("zone-1"), forNodes("node-a")),
			ep("10.244.3.5", "node-c", notReady, forZones("zone-3"), forNodes("node-c")),
			ep("10.244.6.5", "node-f", ready, forZones("zone-3"), forNodes("node-f")))},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.6.5:8080"),
	}, {
		Name:     "prefer-same-node-missing-node-hint-falls-back-to-zone",
		Services: svcs(sameNode()),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.1.5", "node-a", ready, forZones("zone-1"), forNodes("node-a")),
			ep("10.244.4.5", "node-d", ready, forZones("zone-1")),
			ep("10.244.2.5", "node-b", ready, forZones("zone-2"), forNodes("node-b")))},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.1.5:8080", "10.244.4.5:8080"),
	}, {
		Name:     "topology-does-not-apply-to-local-policy",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), internalLocal, trafficDistribution(corev1.ServiceTrafficDistributionPreferClose))),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("10.244.1.5", "node-a", ready, forZones("zone-2")), ep("10.244.2.5", "node-b", ready, forZones("zone-1")))},
		Packets: manyFromPod("10.96.0.10:80", 4, datapath.Forward, "10.244.1.5:8080"),
	}}
}

func skipCases() []Case {
	return []Case{{
		Name:     "headless-service-is-not-proxied",
		Services: svcs(service("web", []string{corev1.ClusterIPNone}, tcpPort("http", 80, 0))),
		Slices:   spread(),
		Packets:  []Packet{fromPod("10.244.1.5:8080", datapath.Pass)},
	}, {
		Name: "externalname-service-is-not-proxied",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), serviceType(corev1.ServiceTypeExternalName),
			func(s *corev1.Service) { s.Spec.ExternalName = "example.com" })),
		Packets: []Packet{fromPod("10.96.0.10:80", datapath.Pass)},
	}, {
		Name:     "service-of-another-proxy-is-not-proxied",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), proxyName("other-proxy"))),
		Slices:   spread(),
		Options:  model.Options{ProxyName: "spoke"},
		Packets:  []Packet{fromPod("10.96.0.10:80", datapath.Pass)},
	}, {
		Name:     "service-of-this-proxy-is-proxied",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), proxyName("spoke"))),
		Slices:   spread(),
		Options:  model.Options{ProxyName: "spoke"},
		Packets:  []Packet{fromPod("10.96.0.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080")},
	}}
}

func invalidInputCases() []Case {
	oversized := make([]discoveryv1.Endpoint, model.MaxSliceEndpoints+1)
	for i := range oversized {
		oversized[i] = ep(fmt.Sprintf("10.245.%d.%d", i/250, i%250+1), "node-b", ready)
	}
	return []Case{{
		Name:     "non-canonical-endpoint-address-is-skipped",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("010.244.2.5", "node-b", ready), ep("10.244.2.6", "node-b", ready))},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.2.6:8080"),
	}, {
		Name: "non-canonical-cluster-ip-skips-only-its-service",
		Services: svcs(service("web", []string{"10.96.0.010"}, tcpPort("http", 80, 0)),
			service("api", []string{"10.96.0.20"}, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{
			slice("web", "web-1", discoveryv1.AddressTypeIPv4, http, ep("10.244.2.5", "node-b", ready)),
			slice("api", "api-1", discoveryv1.AddressTypeIPv4, http, ep("10.244.2.20", "node-b", ready)),
		},
		Packets: []Packet{
			fromPod("10.96.0.8:80", datapath.Pass),
			fromPod("10.96.0.10:80", datapath.Pass),
			fromPod("10.96.0.20:80", datapath.Forward, "10.244.2.20:8080"),
		},
	}, {
		Name:     "oversized-slice-is-skipped",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{
			slice("web", "web-1", discoveryv1.AddressTypeIPv4, http, oversized...),
			slice("web", "web-2", discoveryv1.AddressTypeIPv4, http, ep("10.244.2.5", "node-b", ready)),
		},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.2.5:8080"),
	}, {
		Name:     "unknown-protocol-port-is-skipped",
		Services: svcs(service("web", web, port("icmp", "ICMP", 7, 0), tcpPort("http", 80, 0))),
		Slices:   spread(),
		Packets: []Packet{
			fromPod("10.96.0.10:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromPod("10.96.0.10:7", datapath.Pass),
		},
	}, {
		Name:     "endpoint-of-the-wrong-family-is-skipped",
		Services: svcs(service("web", webDual, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{slice("web", "web-1", discoveryv1.AddressTypeIPv4, http,
			ep("fd00:244:2::5", "node-b", ready), ep("10.244.2.5", "node-b", ready))},
		Packets: []Packet{
			fromPod("10.96.0.10:80", datapath.Forward, "10.244.2.5:8080"),
			fromPod("[fd00:96::10]:80", datapath.Refuse),
		},
	}, {
		Name:     "slice-port-out-of-range-is-skipped",
		Services: svcs(service("web", web, tcpPort("http", 80, 0))),
		Slices: []*discoveryv1.EndpointSlice{
			slice("web", "web-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 70000)},
				ep("10.244.1.5", "node-a", ready)),
			slice("web", "web-2", discoveryv1.AddressTypeIPv4, http, ep("10.244.2.5", "node-b", ready)),
		},
		Packets: manyFromPod("10.96.0.10:80", 8, datapath.Forward, "10.244.2.5:8080"),
	}, {
		Name:     "non-canonical-external-ip-is-skipped",
		Services: svcs(service("web", web, tcpPort("http", 80, 0), externalIPs("192.0.2.010", "192.0.2.11"))),
		Slices:   spread(),
		Packets: []Packet{
			fromOutside("192.0.2.11:80", datapath.Forward, "10.244.1.5:8080", "10.244.2.5:8080"),
			fromOutside("192.0.2.10:80", datapath.Pass),
			fromOutside("192.0.2.8:80", datapath.Pass),
		},
	}}
}

func clusterNode(name, zone string, addrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if zone != "" {
		n.Labels = map[string]string{corev1.LabelTopologyZone: zone}
	}
	for _, a := range addrs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
	}
	return n
}

func svcs(s ...*corev1.Service) []*corev1.Service { return s }

// service builds a ClusterIP service in namespace "default".
func service(name string, clusterIPs []string, opts ...func(*corev1.Service)) *corev1.Service {
	return kubeobj.Service("default", name, clusterIPs, opts...)
}

// slice builds a slice of service svc in namespace "default".
func slice(svc, name string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return kubeobj.EndpointSlice("default", name, svc, family, ports, eps...)
}

func tcpPort(name string, p, nodePort int32) func(*corev1.Service) {
	return port(name, corev1.ProtocolTCP, p, nodePort)
}

// proxyName labels a service for the service proxy of that name.
func proxyName(name string) func(*corev1.Service) {
	return kubeobj.Label(model.ServiceProxyNameLabel, name)
}

// Short names for the shared Service and EndpointSlice builders.
var (
	port                = kubeobj.Port
	serviceType         = kubeobj.Type
	externalIPs         = kubeobj.ExternalIPs
	ingress             = kubeobj.Ingress
	ingressHostname     = kubeobj.IngressHostname
	sourceRanges        = kubeobj.SourceRanges
	clientIPAffinity    = kubeobj.ClientIPAffinity
	internalLocal       = kubeobj.InternalLocal
	externalLocal       = kubeobj.ExternalLocal
	trafficDistribution = kubeobj.TrafficDistribution
	slicePort           = kubeobj.SlicePort
	ep                  = kubeobj.Endpoint
	forZones            = kubeobj.ForZones
	forNodes            = kubeobj.ForNodes
)

// Endpoint states, as the EndpointSlice controller writes the conditions.
const (
	ready              = kubeobj.Ready
	notReady           = kubeobj.NotReady
	servingTerminating = kubeobj.ServingTerminating
	terminating        = kubeobj.Terminating
)

// fromPod is a TCP packet from a pod on the node under test, of the
// destination's family.
func fromPod(dst string, want datapath.Action, backends ...string) Packet {
	return packet(datapath.FromNode, podSrc, podSrc6, dst, want, backends)
}

// fromOutside is a TCP packet from a client outside the cluster.
func fromOutside(dst string, want datapath.Action, backends ...string) Packet {
	return packet(datapath.FromOutside, clientSrc, clientSrc6, dst, want, backends)
}

func packet(origin datapath.Origin, src4, src6 netip.AddrPort, dst string, want datapath.Action, backends []string) Packet {
	d := netip.MustParseAddrPort(dst)
	src := src4
	if d.Addr().Is6() {
		src = src6
	}
	return Packet{
		Origin:   origin,
		Packet:   datapath.Packet{Protocol: datapath.TCP, Src: src, Dst: d},
		Want:     want,
		Backends: addrPorts(backends...),
	}
}

// manyFromPod is n connections from a pod, each from another source port,
// so that a datapath that balances sends them to several backends.
func manyFromPod(dst string, n int, want datapath.Action, backends ...string) []Packet {
	out := make([]Packet, n)
	for i := range out {
		out[i] = fromPod(dst, want, backends...)
		out[i].Src = netip.AddrPortFrom(out[i].Src.Addr(), out[i].Src.Port()+uint16(i))
	}
	return out
}

// stickyFromPod is n connections from one pod, each from another source
// port, that must all reach the same backend.
func stickyFromPod(dst string, n int, backends ...string) []Packet {
	out := manyFromPod(dst, n, datapath.Forward, backends...)
	for i := 1; i < n; i++ {
		out[i].Sticky = true
	}
	return out
}

func withProto(p Packet, proto datapath.Protocol) Packet {
	p.Protocol = proto
	return p
}

func from(p Packet, src string) Packet {
	p.Src = netip.MustParseAddrPort(src)
	return p
}

func addrPorts(s ...string) []netip.AddrPort {
	out := make([]netip.AddrPort, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddrPort(a)
	}
	return out
}
