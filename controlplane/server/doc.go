// Package server serves each agent its node's view over ViewService and
// lets operators inspect what every node holds over
// ControlPlaneInspectionService.
//
// A stream goes through a handshake (the first request, checked and bound
// to a node by an Authenticator), then a receive pump and a send loop run
// beside a session that sends the view one response at a time and settles
// each acknowledgement before the next. Resources are encoded once in the
// store and sent from its bytes (rawCodec).
//
// Caveats: a response is acknowledged before the next is sent, so a slow
// agent only delays itself; a resource larger than the response limit is
// sent alone.
package server
