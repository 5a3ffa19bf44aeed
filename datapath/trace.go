package datapath

import (
	"fmt"
	"net/netip"
)

// Origin says where a traced packet starts.
type Origin uint8

// Origins of a packet.
const (
	// FromNode packets start on the node: in one of its pods or the host.
	FromNode Origin = iota + 1
	// FromOutside packets arrive at the node from elsewhere.
	FromOutside
)

func (o Origin) String() string { return Name(o, "Origin", originNames[:]) }

var originNames = [...]string{FromNode: "node", FromOutside: "outside"}

// Packet is the first packet of a connection, as a tracer sees it.
type Packet struct {
	Protocol Protocol
	Src      netip.AddrPort
	Dst      netip.AddrPort
}

func (p Packet) String() string {
	return fmt.Sprintf("%s %s -> %s", p.Protocol, p.Src, p.Dst)
}

// Action is what a datapath does with a packet.
type Action uint8

// Actions a tracer reports.
const (
	// Pass: the destination is no service of this node; the packet is left
	// alone.
	Pass Action = iota + 1
	// Forward: the packet is sent to Verdict.Backend.
	Forward
	// Refuse: the connection is refused (no endpoint anywhere).
	Refuse
	// Discard: the packet is dropped silently (no local endpoint for a Local
	// policy, or a source outside loadBalancerSourceRanges).
	Discard
)

func (a Action) String() string { return Name(a, "Action", actionNames[:]) }

var actionNames = [...]string{Pass: "pass", Forward: "forward", Refuse: "reject", Discard: "drop"}

// Verdict is the outcome of tracing one packet.
type Verdict struct {
	Action  Action
	Backend netip.AddrPort
	// Service is the key of the matched service, if any.
	Service string
}

func (v Verdict) String() string {
	if v.Action == Forward {
		return fmt.Sprintf("forward to %s (%s)", v.Backend, v.Service)
	}
	if v.Service != "" {
		return fmt.Sprintf("%s (%s)", v.Action, v.Service)
	}
	return v.Action.String()
}
