// Package server serves each agent its node's view over ViewService and
// lets operators inspect what every node holds over
// ControlPlaneInspectionService.
//
// A stream is admitted before it costs anything (Limits: a token bucket on
// new streams, counts of streams with and without an identity, a deadline
// for the first request), then goes through a handshake: the first request
// is checked and bound to a node by an Authenticator, and a replica that is
// behind the API revisions the agent already holds waits to catch up, or
// refuses the stream with Aborted so that the agent tries another. The
// first delta compares what the agent holds with the node's view: its
// versions, or their digest, which the server announces it reads in a
// response header and answers with send_initial_versions when it differs. A
// receive pump and a send loop then run beside a session that sends the
// view one response at a time and settles each acknowledgement before the
// next. Resources are encoded once in the store and sent from its bytes
// (rawCodec).
//
// The server records kube-proxy's network programming latency: from an
// EndpointSlice's last-change-trigger-time to the acknowledgement of the
// view that holds it, once per node.
//
// Caveats: a response is acknowledged before the next is sent, so a slow
// agent only delays itself, and an agent that acknowledges nothing in time
// is disconnected; a resource larger than the response limit is sent
// alone.
package server
