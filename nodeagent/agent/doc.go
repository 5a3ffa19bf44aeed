// Package agent is the node agent: it programs the datapath from its state
// file at start, then streams its node's view from the control plane,
// writes each response to the state file, applies it through the
// reconciler, and acknowledges it, or rejects what the datapath found
// invalid (taking it back from the state file) while keeping its last good
// state. A transient failure (ENOMEM, a failed netlink call, a full table)
// is acknowledged and retried by the reconciler without a new version.
//
// Caveats: one Agent per node and state file. The agent never flushes the
// datapath because the control plane is unreachable: a lost stream only
// starts a reconnect, and nothing the datapath holds is removed before the
// first response of a stream (the first sync). The state file is written
// before the datapath, so after a kill it may be ahead of the datapath
// (the restart applies it) but never behind. A state file the system will
// not let the agent use costs only the cache. The agent's first-sync mark
// is the first response: a view split over several responses is whole only
// after the last one, which the protocol does not mark.
package agent
