// Package model computes what each node must program for each service: the
// per-node views. It is pure: Kubernetes API objects in, view messages out,
// no client, no network, no kernel, so it is table-tested and fuzzed.
//
// A service's views are computed once for every group of nodes that share
// them (Views.Default, ByZone, ByNode), never once per node. Default is
// what a node with no endpoint of the service and no topology hint sees;
// ByZone holds the zones that EndpointSlice zone hints make differ; ByNode
// holds the nodes that host endpoints of a service with a Local traffic
// policy, or that PreferSameNode hints name. Every other node of a Local
// service shares Default, whose Local traffic drops (or rejects when the
// service has no endpoint anywhere). A cluster of 5,000 nodes in 3 zones
// costs at most a few views per service, and the work is proportional to
// the service's endpoints, hinted zones and hinted or hosting nodes.
//
// The policy follows kube-proxy (pkg/proxy: CategorizeEndpoints and the
// service and endpoint change trackers):
//   - Every spec.clusterIPs address; external IPs and load-balancer
//     ingress IPs of a family the service serves (ingress of ipMode Proxy
//     excluded); node ports of NodePort and LoadBalancer services;
//     loadBalancerSourceRanges as canonical CIDRs; ClientIP affinity with
//     its timeout (default 10800 s); the health-check node port of a
//     LoadBalancer service with externalTrafficPolicy Local.
//   - Endpoints of a port come from every slice with a port of the same
//     name and protocol, each slice with its own target port number; an
//     address listed twice is kept once, its most usable listing winning.
//   - Per IP family: ready endpoints, or serving terminating ones when no
//     endpoint is ready; terminating endpoints otherwise stay listed as
//     draining, so datapaths keep their connections but send no new ones.
//   - Topology: node hints when every ready endpoint has one and one names
//     the node, else zone hints when every ready endpoint has one and one
//     names the zone, else every endpoint.
//   - internalTrafficPolicy Local: cluster IP traffic uses the node's own
//     endpoints only. externalTrafficPolicy Local: traffic from outside to
//     node ports, external IPs and load-balancer IPs does; traffic from the
//     node itself to those still reaches every endpoint (kube-proxy's
//     short-circuit, ServicePort.external_from_node).
//   - Skipped: ExternalName and headless services, services whose
//     service-proxy-name label names another proxy, and EndpointSlices
//     labelled service.kubernetes.io/headless (whatever the service).
//
// Caveats: invalid parts of the input are skipped and reported as
// *InputError, so a view may be partial where the input was invalid.
// NoEndpoints is one value per set of backends, not per family: a
// dual-stack Local service whose one family has endpoints elsewhere while
// the other has none anywhere drops both. loadBalancerSourceRanges that
// name one family only restrict the other family too (kube-proxy leaves
// it open), which is the safer reading. A service's trafficDistribution is honoured
// through the hints the EndpointSlice controller writes, as kube-proxy
// does; a service whose slices carry no hints gets no topology.
package model
