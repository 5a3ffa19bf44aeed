// Package datapath declares the interface the node agent drives and the
// plain types it programs: a node's services with every policy already
// resolved by the control plane. Implementations live in sub-packages
// (memory, ebpf, ipvs) and pass one conformance table (package
// conformance).
//
// Caveats: a Datapath is driven by one goroutine (the agent's reconciler);
// Apply validates before it writes, so a rejected change leaves the
// programmed state as it was, but an error from the kernel midway may leave
// a service half-updated until the reconciler's next attempt repairs it.
package datapath
