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
// The count is the node's ready local endpoints, which the control plane
// computes into the view (health_check_local_endpoints): serving but
// terminating endpoints, which the datapath still uses when nothing is
// ready, do not count, so a node left with only those answers 503 and load
// balancers stop sending it new traffic while its connections drain.
package healthcheck
