// Package memory is a datapath held in memory: it programs services into Go
// maps and answers, for a packet, which backend it reaches. The scale
// simulator runs thousands of them, and agent tests use it where the kernel
// is not what is under test; it runs the conformance table like every
// other datapath.
//
// Trace takes the packet's origin: traffic that starts on the node (its
// pods or the host) to a node port, external IP or load-balancer IP uses a
// port's ExternalFromNode backends, traffic from outside its External
// ones. ClientIP session affinity keeps a client on its backend for the
// service's timeout after its last connection, against the clock in
// Options.Now, which tests replace.
//
// Caveats: services passed to Apply are kept as they are, not copied; the
// caller must not change them afterwards (the agent never does: each decoded
// service is new). The lookup index is built on the first Trace after a
// change, so a node that is never traced pays nothing for it. Affinity
// entries are kept until a later connection of their client finds them
// expired. Trace follows first packets only: there is no connection table,
// so draining endpoints are simply never chosen.
package memory
