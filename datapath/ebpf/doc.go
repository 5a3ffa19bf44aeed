// Package ebpf is the eBPF datapath: it owns the BPF programs of bpf/
// (built with bpf2go, objects committed), the maps that hold the node's
// services, backends and flows, and the links that attach the programs.
// Traffic from the node and its pods is balanced at the socket (cgroup v2
// connect, sendmsg, recvmsg and getpeername hooks: no per-packet work);
// traffic from outside is translated per packet by tc programs on the
// node's devices, with a connection table and reverse NAT. README.md draws
// both ways.
//
// Maps and links are pinned under Options.PinPath, so that the datapath
// outlives the agent: a new agent adopts the pins and replaces the programs
// atomically; its first Apply reads back what the maps hold. A pinned stamp
// map keeps the agent's stamp (datapath.Stamper), with which a restarted
// agent knows, without reading the maps back, that they hold its state
// file's services.
//
// Caveats: needs root, BTF, cgroup v2 and bpffs. The kernel runs no cgroup
// connect hook for SCTP sockets, so SCTP to a service from the node or its
// pods is not balanced; SCTP from outside is. A full map is an error that
// names the map; services are never programmed in part.
package ebpf
