// Package agent is the node agent: it programs the datapath from its state
// file at start, then streams its node's view from the control plane,
// applies each response through the reconciler, stores what it applied,
// and acknowledges it, or rejects what it could not apply while keeping its
// last good state.
//
// Caveats: one Agent per node and state file. The agent never flushes the
// datapath because the control plane is unreachable: a lost stream only
// starts a reconnect.
package agent
