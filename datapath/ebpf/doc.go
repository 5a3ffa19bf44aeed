// Package ebpf is the eBPF datapath: it owns the BPF programs of bpf/
// (built with bpf2go, objects committed), the maps that hold the node's
// services, backends and flows, and the links that attach the programs.
// Traffic from the node and its pods is balanced at the socket (cgroup v2
// connect, sendmsg, recvmsg and getpeername hooks: no per-packet work);
// traffic from outside is translated per packet by tc programs on the
// node's external devices, with a connection table and reverse NAT.
// README.md draws both ways.
//
// Maps, links and programs are pinned under Options.PinPath, so that the
// datapath outlives the agent: a new agent adopts the pins and replaces the
// programs atomically (with the pinned ones when they are its build's, so
// that the kernel verifies nothing again); its first Apply reads back what
// the maps hold. A pinned stamp
// map keeps the agent's stamp (datapath.Stamper), with which a restarted
// agent knows, without reading the maps back, that they hold its state
// file's services.
//
// The kernel runs no cgroup socket hook for SCTP, so SCTP from the node's
// pods is translated per packet too, by tc programs on the devices pods send
// from (Options.PodDevices), attached to as they appear; SCTP the node
// itself sends (host network), on its way out by an external device.
//
// Caveats: needs root, BTF, cgroup v2 and bpffs. SCTP the node sends to a
// service address is balanced only if its routes send that address out of
// an external device (the default route's, on most nodes). A pod's first
// packets may pass untranslated if they leave before the watcher has
// attached to its new device. A full map is an error that names the map;
// services are never programmed in part.
package ebpf
