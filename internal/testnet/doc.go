// Package testnet builds a node and its surroundings out of network
// namespaces, veth pairs and a cgroup, and sends real TCP, UDP and SCTP packets
// through it, reporting where each one went. Datapath tests use it to trace
// packets through the real kernel:
//
//	 pod ──pod0─┐                  ┌─eth0── outside (external clients,
//	            │                  │        remote backends behind it)
//	backend ─be*┤ node (datapath)  │
//	            │                  └─sink0─ world (every other address)
//
// Every address the lab knows answers on demand: a backend or any other
// destination runs a responder that reports the address it was reached on
// and the source it saw, so that a trace tells forwarding to a backend
// apart from a packet left alone. Clients on the node run in a helper
// process in the lab's pod cgroup (so that cgroup socket programs apply to
// them); clients outside run in the test process, which is outside that
// cgroup.
//
// Test binaries that use a Lab must call Main from TestMain: the helper is
// the test binary itself.
//
// Caveats: needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and cgroup v2. A
// packet that gets no answer within Options.Timeout counts as dropped, so a
// slow machine needs a longer timeout. SCTP packets go through SCTP
// sockets made with system calls and handed to Go's poller (sctp.go), so
// they need a kernel with SCTP sockets (HaveSCTP): a kernel without them
// that cannot load the sctp module gives an error for every SCTP probe and
// responder; callers check HaveSCTP and skip (the Debian kernel of hack/vm
// has them).
package testnet
