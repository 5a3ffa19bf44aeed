package model_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/spoke-proxy/spoke/controlplane/model"
)

const (
	v4 = discoveryv1.AddressTypeIPv4
	v6 = discoveryv1.AddressTypeIPv6
)

var (
	ip4     = []string{"10.96.0.10"}
	ip6     = []string{"fd00::10"}
	dual    = []string{"10.96.0.10", "fd00::10"}
	httpTCP = []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}
	zones   = map[string]string{"node-a": "zone-1", "node-b": "zone-2", "node-c": "zone-3", "node-d": "zone-1"}
)

type computeCase struct {
	name   string
	svc    *corev1.Service
	slices []*discoveryv1.EndpointSlice
	opts   model.Options
	// want is the rendered views (see render).
	want string
	// errs are substrings of the errors expected, in order.
	errs []string
}

func runCompute(t *testing.T, cases []computeCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			views, errs := model.Compute(c.svc, c.slices, model.Topology{Zones: zones}, c.opts)
			if got, want := render(views), dedent(c.want); got != want {
				t.Errorf("views:\n%s\nwant:\n%s", got, want)
			}
			if len(errs) != len(c.errs) {
				t.Fatalf("errors %q, want %d matching %q", errs, len(c.errs), c.errs)
			}
			for i, err := range errs {
				if !strings.Contains(err.Error(), c.errs[i]) {
					t.Errorf("error %d: %q does not contain %q", i, err, c.errs[i])
				}
				var ie *model.InputError
				if !errors.As(err, &ie) || ie.Name == "" {
					t.Errorf("error %d: %v is not an InputError naming its object", i, err)
				}
			}
		})
	}
}

func TestComputeClusterIP(t *testing.T) {
	runCompute(t, []computeCase{{
		name: "ready endpoints only",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.2.5", "node-b", ready), endpoint("10.244.1.5", "node-a", ready), endpoint("10.244.1.6", "node-a", notReady))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			`,
	}, {
		name: "no endpoints rejects",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject:
			`,
	}, {
		name: "IPv6 single-stack",
		svc:  service("web", ip6, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-6", "web", v6, httpTCP,
			endpoint("fd00:244::6", "node-b", ready), endpoint("fd00:244::5", "node-a", ready))},
		want: `
			default
			  ips fd00::10
			  port "http" TCP 80
			    internal reject: [fd00:244::5]:8080 [fd00:244::6]:8080
			`,
	}, {
		name: "dual-stack uses both families",
		svc:  service("web", dual, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{
			endpointSlice("web-6", "web", v6, httpTCP, endpoint("fd00:244::5", "node-a", ready)),
			endpointSlice("web-4", "web", v4, httpTCP, endpoint("10.244.1.5", "node-a", ready)),
		},
		want: `
			default
			  ips 10.96.0.10,fd00::10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 [fd00:244::5]:8080
			`,
	}, {
		name: "named target port resolved per slice",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{
			endpointSlice("web-1", "web", v4, httpTCP, endpoint("10.244.1.5", "node-a", ready)),
			endpointSlice("web-2", "web", v4, []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 9090)}, endpoint("10.244.2.5", "node-b", ready)),
		},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:9090
			`,
	}, {
		name: "ports match slices by name and protocol",
		svc: service("dns", ip4, port("dns", corev1.ProtocolUDP, 53, 0), port("dns-tcp", corev1.ProtocolTCP, 53, 0),
			port("sctp", corev1.ProtocolSCTP, 9, 0)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("dns-1", "dns", v4,
			[]discoveryv1.EndpointPort{slicePort("dns", corev1.ProtocolUDP, 5353), slicePort("dns-tcp", corev1.ProtocolTCP, 5354),
				slicePort("dns", corev1.ProtocolTCP, 1), slicePort("sctp", corev1.ProtocolSCTP, 99)},
			endpoint("10.244.1.5", "node-a", ready))},
		want: `
			default
			  ips 10.96.0.10
			  port "dns" UDP 53
			    internal reject: 10.244.1.5:5353
			  port "dns-tcp" TCP 53
			    internal reject: 10.244.1.5:5354
			  port "sctp" SCTP 9
			    internal reject: 10.244.1.5:99
			`,
	}, {
		name: "an address in two slices is kept once, ready listing first",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{
			endpointSlice("web-1", "web", v4, httpTCP, endpoint("10.244.1.5", "node-a", notReady), endpoint("10.244.1.6", "node-a", ready)),
			endpointSlice("web-2", "web", v4, httpTCP, endpoint("10.244.1.5", "node-a", ready), endpoint("10.244.1.6", "node-a", ready)),
		},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.1.6:8080
			`,
	}, {
		name: "slices without a matching port add nothing",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{
			endpointSlice("web-1", "web", v4, []discoveryv1.EndpointPort{slicePort("metrics", corev1.ProtocolTCP, 9100)}, endpoint("10.244.1.5", "node-a", ready)),
		},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject:
			`,
	}})
}

func TestComputeEndpointConditions(t *testing.T) {
	runCompute(t, []computeCase{{
		name: "terminating endpoints drain while ready ones exist",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", ready), endpoint("10.244.1.6", "node-a", servingTerminating),
			endpoint("10.244.1.7", "node-a", terminating), endpoint("10.244.1.8", "node-a", notReady))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 ~10.244.1.6:8080 ~10.244.1.7:8080
			`,
	}, {
		name: "serving terminating endpoints take connections when none is ready",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.6", "node-a", servingTerminating), endpoint("10.244.1.7", "node-a", terminating),
			endpoint("10.244.1.8", "node-a", notReady))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.6:8080 ~10.244.1.7:8080
			`,
	}, {
		name: "fallback is decided per family",
		svc:  service("web", dual, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{
			endpointSlice("web-4", "web", v4, httpTCP, endpoint("10.244.1.6", "node-a", servingTerminating)),
			endpointSlice("web-6", "web", v6, httpTCP, endpoint("fd00:244::5", "node-a", ready), endpoint("fd00:244::6", "node-a", servingTerminating)),
		},
		want: `
			default
			  ips 10.96.0.10,fd00::10
			  port "http" TCP 80
			    internal reject: 10.244.1.6:8080 [fd00:244::5]:8080 ~[fd00:244::6]:8080
			`,
	}, {
		name: "unset conditions mean ready",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			discoveryv1.Endpoint{Addresses: []string{"10.244.1.5"}})},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080
			`,
	}})
}

func TestComputeExternalFrontends(t *testing.T) {
	runCompute(t, []computeCase{{
		name: "node port",
		svc:  service("web", ip4, svcType(corev1.ServiceTypeNodePort), port("http", corev1.ProtocolTCP, 80, 30080)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", ready))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80 nodeport 30080
			    internal reject: 10.244.1.5:8080
			`,
	}, {
		name: "node port of a ClusterIP service is ignored",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 30080)),
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject:
			`,
	}, {
		name: "load balancer: VIP ingress only, canonical source ranges, no health check under Cluster policy",
		svc: service("web", dual, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 30080),
			ingress("203.0.113.7", ""), ingress("203.0.113.8", corev1.LoadBalancerIPModeVIP), ingress("203.0.113.9", corev1.LoadBalancerIPModeProxy),
			ingress("2001:db8::7", ""), func(s *corev1.Service) {
				s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{Hostname: "lb.example"})
				s.Spec.HealthCheckNodePort = 32000
			},
			sourceRanges(" 192.0.2.0/24", "198.51.100.7/16", "192.0.2.0/24", "2001:db8:1::/48")),
		want: `
			default
			  ips 10.96.0.10,fd00::10 lb 203.0.113.7,203.0.113.8,2001:db8::7 ranges 192.0.2.0/24,198.51.0.0/16,2001:db8:1::/48
			  port "http" TCP 80 nodeport 30080
			    internal reject:
			`,
	}, {
		name: "load balancer without node ports",
		svc: service("web", ip4, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 0),
			ingress("203.0.113.7", "")),
		want: `
			default
			  ips 10.96.0.10 lb 203.0.113.7
			  port "http" TCP 80
			    internal reject:
			`,
	}, {
		name: "source ranges without load-balancer IPs are left out",
		svc: service("web", ip4, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 30080),
			sourceRanges("192.0.2.0/24")),
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80 nodeport 30080
			    internal reject:
			`,
	}, {
		name: "external IPs sorted and deduplicated, other family skipped",
		svc: service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0),
			externalIPs("198.51.100.9", "198.51.100.2", "198.51.100.9", "2001:db8::9")),
		want: `
			default
			  ips 10.96.0.10 external 198.51.100.2,198.51.100.9
			  port "http" TCP 80
			    internal reject:
			`,
		errs: []string{"external IP 2001:db8::9: the service has no IPv6 cluster IP"},
	}, {
		name: "ClientIP affinity defaults to 10800 s",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), affinity(nil)),
		want: `
			default
			  ips 10.96.0.10 affinity 10800
			  port "http" TCP 80
			    internal reject:
			`,
	}, {
		name: "ClientIP affinity timeout",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), affinity(ptr.To[int32](60))),
		want: `
			default
			  ips 10.96.0.10 affinity 60
			  port "http" TCP 80
			    internal reject:
			`,
	}, {
		name: "ClientIP affinity timeout out of range uses the default",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), affinity(ptr.To[int32](86401))),
		want: `
			default
			  ips 10.96.0.10 affinity 10800
			  port "http" TCP 80
			    internal reject:
			`,
		errs: []string{"session affinity timeout 86401 s out of range"},
	}})
}

func TestComputeTrafficPolicies(t *testing.T) {
	spread := []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
		endpoint("10.244.1.5", "node-a", ready), endpoint("10.244.2.5", "node-b", ready), endpoint("10.244.3.5", "node-c", notReady))}
	runCompute(t, []computeCase{{
		name:   "internalTrafficPolicy Local: nodes without local endpoints drop, hosts use their own",
		svc:    service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), internalLocal),
		slices: spread,
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal drop:
			node node-a
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal drop: 10.244.1.5:8080
			node node-b
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal drop: 10.244.2.5:8080
			`,
	}, {
		name: "internalTrafficPolicy Local without endpoints anywhere rejects",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), internalLocal),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.3.5", "node-c", notReady))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject:
			`,
	}, {
		name: "Local policy falls back to the node's serving terminating endpoints",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), internalLocal),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", servingTerminating), endpoint("10.244.1.6", "node-a", terminating),
			endpoint("10.244.2.5", "node-b", ready), endpoint("10.244.2.6", "node-b", servingTerminating))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal drop:
			node node-a
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal drop: 10.244.1.5:8080 ~10.244.1.6:8080
			node node-b
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal drop: 10.244.2.5:8080 ~10.244.2.6:8080
			`,
	}, {
		name:   "externalTrafficPolicy Local load balancer: external traffic local, health check port",
		svc:    service("web", ip4, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 30080), ingress("203.0.113.7", ""), externalLocal(32000)),
		slices: spread,
		want: `
			default
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000
			  port "http" TCP 80 nodeport 30080
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			    external drop:
			node node-a
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000 ready-here 1
			  port "http" TCP 80 nodeport 30080
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			    external drop: 10.244.1.5:8080
			node node-b
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000 ready-here 1
			  port "http" TCP 80 nodeport 30080
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			    external drop: 10.244.2.5:8080
			`,
	}, {
		name: "health check counts a node's ready endpoints only, not the serving terminating ones it falls back to",
		svc: service("web", ip4, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 30080),
			port("https", corev1.ProtocolTCP, 443, 30443), ingress("203.0.113.7", ""), externalLocal(32000)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, []discoveryv1.EndpointPort{httpTCP[0], {Name: ptr.To("https"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8443)}},
			endpoint("10.244.1.5", "node-a", servingTerminating),
			endpoint("10.244.2.5", "node-b", ready), endpoint("10.244.2.6", "node-b", servingTerminating))},
		want: `
			default
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000
			  port "http" TCP 80 nodeport 30080
			    internal reject: ~10.244.1.5:8080 10.244.2.5:8080 ~10.244.2.6:8080
			    external drop:
			  port "https" TCP 443 nodeport 30443
			    internal reject: ~10.244.1.5:8443 10.244.2.5:8443 ~10.244.2.6:8443
			    external drop:
			node node-a
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000
			  port "http" TCP 80 nodeport 30080
			    internal reject: ~10.244.1.5:8080 10.244.2.5:8080 ~10.244.2.6:8080
			    external drop: 10.244.1.5:8080
			  port "https" TCP 443 nodeport 30443
			    internal reject: ~10.244.1.5:8443 10.244.2.5:8443 ~10.244.2.6:8443
			    external drop: 10.244.1.5:8443
			node node-b
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000 ready-here 1
			  port "http" TCP 80 nodeport 30080
			    internal reject: ~10.244.1.5:8080 10.244.2.5:8080 ~10.244.2.6:8080
			    external drop: 10.244.2.5:8080 ~10.244.2.6:8080
			  port "https" TCP 443 nodeport 30443
			    internal reject: ~10.244.1.5:8443 10.244.2.5:8443 ~10.244.2.6:8443
			    external drop: 10.244.2.5:8443 ~10.244.2.6:8443
			`,
	}, {
		name:   "externalTrafficPolicy Local on a ClusterIP service without external IPs is ignored",
		svc:    service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), externalLocal(0)),
		slices: spread,
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			`,
	}, {
		name:   "externalTrafficPolicy Local on external IPs",
		svc:    service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), externalIPs("198.51.100.9"), externalLocal(0)),
		slices: spread[:1],
		want: `
			default
			  ips 10.96.0.10 external 198.51.100.9
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			    external drop:
			node node-a
			  ips 10.96.0.10 external 198.51.100.9
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			    external drop: 10.244.1.5:8080
			node node-b
			  ips 10.96.0.10 external 198.51.100.9
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			    external drop: 10.244.2.5:8080
			`,
	}, {
		name:   "both policies Local: traffic from the node to a node port reaches every endpoint",
		svc:    service("web", ip4, svcType(corev1.ServiceTypeNodePort), port("http", corev1.ProtocolTCP, 80, 30080), internalLocal, externalLocal(0)),
		slices: spread,
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80 nodeport 30080
			    internal drop:
			    from-node reject: 10.244.1.5:8080 10.244.2.5:8080
			node node-a
			  ips 10.96.0.10
			  port "http" TCP 80 nodeport 30080
			    internal drop: 10.244.1.5:8080
			    from-node reject: 10.244.1.5:8080 10.244.2.5:8080
			node node-b
			  ips 10.96.0.10
			  port "http" TCP 80 nodeport 30080
			    internal drop: 10.244.2.5:8080
			    from-node reject: 10.244.1.5:8080 10.244.2.5:8080
			`,
	}, {
		name:   "internal Local, external Cluster",
		svc:    service("web", ip4, svcType(corev1.ServiceTypeNodePort), port("http", corev1.ProtocolTCP, 80, 30080), internalLocal),
		slices: spread[:1],
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80 nodeport 30080
			    internal drop:
			    external reject: 10.244.1.5:8080 10.244.2.5:8080
			    from-node reject: 10.244.1.5:8080 10.244.2.5:8080
			node node-a
			  ips 10.96.0.10
			  port "http" TCP 80 nodeport 30080
			    internal drop: 10.244.1.5:8080
			    external reject: 10.244.1.5:8080 10.244.2.5:8080
			    from-node reject: 10.244.1.5:8080 10.244.2.5:8080
			node node-b
			  ips 10.96.0.10
			  port "http" TCP 80 nodeport 30080
			    internal drop: 10.244.2.5:8080
			    external reject: 10.244.1.5:8080 10.244.2.5:8080
			    from-node reject: 10.244.1.5:8080 10.244.2.5:8080
			`,
	}, {
		name: "health check node port out of range",
		svc:  service("web", ip4, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 30080), externalLocal(0)),
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80 nodeport 30080
			    internal reject:
			    external reject:
			`,
		errs: []string{"health check node port 0 out of range"},
	}})
}

func TestComputeTopology(t *testing.T) {
	preferClose := func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferClose)
	}
	preferNode := func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferSameNode)
	}
	runCompute(t, []computeCase{{
		name: "zone hints: a view per hinted zone, default for the others",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), preferClose),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", ready, forZones("zone-1")), endpoint("10.244.2.5", "node-b", ready, forZones("zone-2")),
			endpoint("10.244.2.6", "node-b", ready, forZones("zone-2")), endpoint("10.244.2.7", "node-b", terminating))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080 10.244.2.6:8080 ~10.244.2.7:8080
			zone zone-1
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 ~10.244.2.7:8080
			zone zone-2
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.2.5:8080 10.244.2.6:8080 ~10.244.2.7:8080
			`,
	}, {
		name: "a ready endpoint without hints disables zone topology",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), preferClose),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", ready, forZones("zone-1")), endpoint("10.244.2.5", "node-b", ready))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			`,
	}, {
		name: "hints of endpoints that are not ready do not count",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), preferClose),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", ready, forZones("zone-1")), endpoint("10.244.2.5", "node-b", ready, forZones("zone-1")),
			endpoint("10.244.3.5", "node-c", notReady, forZones("zone-3")), endpoint("10.244.3.6", "node-c", notReady))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			`,
	}, {
		name: "PreferSameNode: hinted nodes get their own endpoint, others their zone's",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), preferNode),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", ready, forZones("zone-1"), forNodes("node-a")),
			endpoint("10.244.2.5", "node-b", ready, forZones("zone-2"), forNodes("node-b")))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			zone zone-1
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080
			zone zone-2
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.2.5:8080
			node node-a
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080
			node node-b
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.2.5:8080
			`,
	}, {
		name: "PreferSameNode with an endpoint lacking a node hint falls back to zones",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), preferNode),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", ready, forZones("zone-1"), forNodes("node-a")),
			endpoint("10.244.2.5", "node-b", ready, forZones("zone-2")))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			zone zone-1
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080
			zone zone-2
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.2.5:8080
			`,
	}, {
		name: "node views of a Local service take their zone's cluster endpoints",
		svc: service("web", ip4, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 30080),
			ingress("203.0.113.7", ""), externalLocal(32000), preferClose),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("10.244.1.5", "node-a", ready, forZones("zone-1")), endpoint("10.244.2.5", "node-b", ready, forZones("zone-2")))},
		want: `
			default
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000
			  port "http" TCP 80 nodeport 30080
			    internal reject: 10.244.1.5:8080 10.244.2.5:8080
			    external drop:
			zone zone-1
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000
			  port "http" TCP 80 nodeport 30080
			    internal reject: 10.244.1.5:8080
			    external drop:
			zone zone-2
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000
			  port "http" TCP 80 nodeport 30080
			    internal reject: 10.244.2.5:8080
			    external drop:
			node node-a
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000 ready-here 1
			  port "http" TCP 80 nodeport 30080
			    internal reject: 10.244.1.5:8080
			    external drop: 10.244.1.5:8080
			node node-b
			  ips 10.96.0.10 lb 203.0.113.7 healthcheck 32000 ready-here 1
			  port "http" TCP 80 nodeport 30080
			    internal reject: 10.244.2.5:8080
			    external drop: 10.244.2.5:8080
			`,
	}})
}

func TestComputeSkips(t *testing.T) {
	runCompute(t, []computeCase{{
		name: "headless",
		svc:  service("web", []string{corev1.ClusterIPNone}, port("http", corev1.ProtocolTCP, 80, 0)),
	}, {
		name: "ExternalName",
		svc: service("web", []string{""}, port("http", corev1.ProtocolTCP, 80, 0), svcType(corev1.ServiceTypeExternalName),
			func(s *corev1.Service) { s.Spec.ExternalName = "example.com"; s.Spec.ClusterIPs = nil }),
	}, {
		name: "served by another proxy",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), label(model.ServiceProxyNameLabel, "other")),
		opts: model.Options{ProxyName: "spoke"},
	}, {
		name: "EndpointSlices labelled headless are ignored",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{
			withLabel(endpointSlice("web-1", "web", v4, httpTCP, endpoint("10.244.1.5", "node-a", ready)), corev1.IsHeadlessService, ""),
			endpointSlice("web-2", "web", v4, httpTCP, endpoint("10.244.1.6", "node-a", ready)),
		},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.6:8080
			`,
	}, {
		name: "labelled for this proxy",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0), label(model.ServiceProxyNameLabel, "spoke")),
		opts: model.Options{ProxyName: "spoke"},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject:
			`,
	}})
}

func TestComputeInvalidInput(t *testing.T) {
	many := make([]discoveryv1.Endpoint, model.MaxSliceEndpoints+1)
	for i := range many {
		many[i] = endpoint(fmt.Sprintf("10.245.%d.%d", i/250, i%250+1), "node-a", ready)
	}
	runCompute(t, []computeCase{{
		name: "non-canonical and foreign-family endpoint addresses are skipped",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP,
			endpoint("010.244.1.5", "node-a", ready), endpoint("fd00::5", "node-a", ready), endpoint("10.244.1.6", "node-a", ready),
			discoveryv1.Endpoint{})},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.6:8080
			`,
		errs: []string{`endpoint 0: invalid IP "010.244.1.5"`, "endpoint 1: address fd00::5 in an IPv4 slice", "endpoint 3: no address"},
	}, {
		name: "a non-canonical cluster IP skips the service",
		svc:  service("web", []string{"10.96.0.010"}, port("http", corev1.ProtocolTCP, 80, 0)),
		errs: []string{`cluster IP: invalid IP "10.96.0.010"`, "no valid cluster IP"},
	}, {
		name: "a non-canonical secondary cluster IP is skipped",
		svc:  service("web", []string{"10.96.0.10", "FD00::10"}, port("http", corev1.ProtocolTCP, 80, 0)),
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject:
			`,
		errs: []string{`IP "FD00::10" is not in canonical form`},
	}, {
		name: "bad service ports are skipped",
		svc: service("web", ip4, svcType(corev1.ServiceTypeNodePort), port("a", "ICMP", 80, 0), port("b", corev1.ProtocolTCP, 70000, 0),
			port("c", corev1.ProtocolTCP, 81, 70000), port("d", corev1.ProtocolTCP, 81, 0), port("e", corev1.ProtocolUDP, 81, 0)),
		want: `
			default
			  ips 10.96.0.10
			  port "c" TCP 81
			    internal reject:
			  port "e" UDP 81
			    internal reject:
			`,
		errs: []string{`port "a": unknown protocol "ICMP"`, `port "b": port 70000 out of range`, `port "c": node port 70000 out of range`, `port "d": duplicate TCP port 81`},
	}, {
		name: "bad slice ports are skipped",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4,
			[]discoveryv1.EndpointPort{slicePort("http", "ICMP", 8080), slicePort("http", corev1.ProtocolTCP, 0), slicePort("http", corev1.ProtocolTCP, 8081),
				{Name: ptr.To("x")}},
			endpoint("10.244.1.5", "node-a", ready))},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8081
			`,
		errs: []string{`unknown protocol "ICMP"`, "port 0 out of range", `port "x": no port number`},
	}, {
		name: "a slice over the API's endpoint limit is skipped, others are kept",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{
			endpointSlice("web-1", "web", v4, httpTCP, many...),
			endpointSlice("web-2", "web", v4, httpTCP, endpoint("10.244.1.5", "node-a", ready)),
		},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject: 10.244.1.5:8080
			`,
		errs: []string{"1001 endpoints exceed the limit of 1000"},
	}, {
		name: "a slice of a family the service does not serve is skipped",
		svc:  service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		slices: []*discoveryv1.EndpointSlice{
			endpointSlice("web-6", "web", v6, httpTCP, endpoint("fd00::5", "node-a", ready)),
			endpointSlice("web-f", "web", discoveryv1.AddressTypeFQDN, httpTCP, endpoint("example.com", "node-a", ready)),
		},
		want: `
			default
			  ips 10.96.0.10
			  port "http" TCP 80
			    internal reject:
			`,
		errs: []string{"IPv6 slice for a service without a IPv6 cluster IP"},
	}, {
		name: "bad source ranges are skipped",
		svc: service("web", ip4, svcType(corev1.ServiceTypeLoadBalancer), port("http", corev1.ProtocolTCP, 80, 0), ingress("203.0.113.7", ""),
			ingress("203.0.113.08", ""), sourceRanges("010.0.0.0/8", "10.0.0.0/33", "::ffff:10.0.0.0/104", "10.0.0.0/8")),
		want: `
			default
			  ips 10.96.0.10 lb 203.0.113.7 ranges 10.0.0.0/8
			  port "http" TCP 80
			    internal reject:
			`,
		errs: []string{`load-balancer IP: invalid IP "203.0.113.08"`, `"010.0.0.0/8" is not a canonical CIDR`, `"10.0.0.0/33"`, `"::ffff:10.0.0.0/104"`},
	}})
}

func TestComputeAcceptsFullSlice(t *testing.T) {
	full := make([]discoveryv1.Endpoint, model.MaxSliceEndpoints)
	for i := range full {
		full[i] = endpoint(fmt.Sprintf("10.245.%d.%d", i/250, i%250+1), "node-a", ready)
	}
	views, errs := model.Compute(service("web", ip4, port("http", corev1.ProtocolTCP, 80, 0)),
		[]*discoveryv1.EndpointSlice{endpointSlice("web-1", "web", v4, httpTCP, full...)}, model.Topology{}, model.Options{})
	if len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}
	if n := len(views.Default.Ports[0].Internal.Endpoints); n != model.MaxSliceEndpoints {
		t.Fatalf("%d endpoints, want %d", n, model.MaxSliceEndpoints)
	}
}
