// Package healthcheck serves the health-check node port of every
// externalTrafficPolicy: Local service in the node's view, as kube-proxy's
// pkg/proxy/healthcheck does for cloud load balancers: an HTTP server on the
// service's healthCheckNodePort answers 200 with the count of the node's
// local endpoints, or 503 when the node has none (or the agent is not
// healthy), so that load balancers send the service's traffic only to nodes
// that can serve it without leaving the node.
//
// Servers open and close as services come and go: Sync takes the whole set
// and changes only what differs. A port that cannot be opened is retried on
// the next Sync and reported, never fatal.
//
// Caveats: local endpoints are the active (non-draining) endpoints of the
// node's external backends. The view does not say whether they are ready or
// serving-but-terminating (the fallback when nothing is ready), so a node
// whose only local endpoints are terminating answers 200 where kube-proxy
// answers 503.
package healthcheck
