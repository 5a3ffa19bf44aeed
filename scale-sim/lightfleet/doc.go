// Package lightfleet runs the scale simulator's nodes as light agents in
// worker processes of their own, apart from the control plane and from the
// simulator's API, so that what is measured of the control plane is its own
// work and not the fleet's.
//
// A light agent speaks the real stream protocol (spoke.v1.ViewService):
// the first request names the node and the versions and API revisions it
// holds, every response is acknowledged by its nonce, and a resource whose
// content does not hash to its version is refused (NACK) and not held. It
// decodes only the envelope: resource names, versions and the raw content,
// which it hashes (the hash the control plane's version is made of) and
// forgets. It programs no datapath.
//
// The parent starts the workers by running its own executable again with
// WorkerEnv set; a binary that hosts the parent calls RunWorkerIfAsked
// first thing in main (or TestMain). The parent sends commands on the
// worker's stdin and the worker sends events on its stdout, both as gob
// streams: every applied response (node, names, versions, the wall-clock
// time it was applied), and answers to queries of a node's held hashes and
// of the bytes read.
//
// At most Options.MaxConnecting nodes of a worker wait at once for the
// first response of a stream, so that a control plane short of CPU is not
// handed more connections than it accepts before their clients give up.
//
// Caveats: a light agent checks what a response carries, not what it
// means: a view that the real agent would fail to decode or to program is
// held here. The figures are the control plane's ceiling, and the full
// fleet stays the reference for what agents do.
package lightfleet
