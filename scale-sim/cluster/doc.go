// Package cluster generates the scale simulator's cluster: Nodes spread over
// zones, Services (a fraction NodePort with externalTrafficPolicy Local, a
// fraction with trafficDistribution PreferClose and zone hints) and their
// EndpointSlices, and the churn applied to them: an endpoint replaced by a
// new pod on a random node, as a rolling update does.
//
// For every change it computes, with the control plane's own model package,
// the version of each view the control plane must send, so that the
// simulator knows which nodes a change reaches and recognises the moment a
// node's datapath holds it.
//
// Caveats: objects are built as an API server stores them (defaulted, with
// cluster IPs and node ports assigned); against a real API server the
// simulator replaces them with what the server returned before computing.
// The expected versions hold only while the control plane runs the same
// model code as the simulator (the same build).
package cluster
