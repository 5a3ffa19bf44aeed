package ebpf

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
)

// owned are the entries of the configuration maps that belong to one
// service. Computing them is pure: the kernel is touched only when they are
// written.
type owned struct {
	meta      map[uint32]lbSvcInfo
	ports     map[lbPortKey]lbPortInfo
	addrs     map[lbAddrKey]lbAddr
	frontends map[lbSvcKey]lbSvcVal
	slots     map[lbSlotKey]lbSlotVal
	ranges    map[lbRangeKey]uint32
}

func newOwned() owned {
	return owned{
		meta:      map[uint32]lbSvcInfo{},
		ports:     map[lbPortKey]lbPortInfo{},
		addrs:     map[lbAddrKey]lbAddr{},
		frontends: map[lbSvcKey]lbSvcVal{},
		slots:     map[lbSlotKey]lbSlotVal{},
		ranges:    map[lbRangeKey]uint32{},
	}
}

// groupIdent names a backend group across updates: a service port's backend
// set for one address family. A port keeps its groups when other ports are
// added or removed, so frontends never point at another port's backends.
type groupIdent struct {
	service string
	proto   uint8
	port    uint16
	set     uint8
	is6     bool
}

// endpointIdent names an endpoint within a group: its address and which
// occurrence of that address it is.
type endpointIdent struct {
	addr netip.AddrPort
	nth  int
}

// ids resolves and allocates the numbers entries refer to. The planner
// implements it against the current state, tentatively.
type ids interface {
	group(g groupIdent) uint32
	backend(a netip.AddrPort) uint32
	// slots returns the slot each endpoint of a group had, if any.
	slots(group uint32) map[endpointIdent]uint32
}

// Limits the map layout imposes beyond Service.Validate.
const (
	maxPorts     = 1 << 10
	maxAddresses = math.MaxUint16
)

// checkLayout reports what Validate allows but the maps cannot hold.
func checkLayout(s *datapath.Service) error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", datapath.ErrInvalid, s.Key, fmt.Sprintf(format, args...))
	}
	if len(s.Key) > svcKeyLen {
		return invalid("key longer than %d bytes", svcKeyLen)
	}
	if len(s.Ports) > maxPorts {
		return invalid("more than %d ports", maxPorts)
	}
	if len(s.ClusterIPs) > maxAddresses || len(s.ExternalIPs) > maxAddresses || len(s.LoadBalancerIPs) > maxAddresses || len(s.SourceRanges) > maxAddresses {
		return invalid("more than %d addresses of a kind", maxAddresses)
	}
	for _, p := range s.Ports {
		if len(p.Name) > portNameLen {
			return invalid("port name %q longer than %d bytes", p.Name, portNameLen)
		}
		for _, b := range []*datapath.Backends{&p.Internal, p.External, p.ExternalFromNode} {
			if b != nil && len(b.Endpoints) > math.MaxUint16 {
				return invalid("port %q: more than %d endpoints", p.Name, math.MaxUint16)
			}
		}
	}
	return nil
}

// affinitySeconds rounds a timeout up to whole seconds for the programs.
func affinitySeconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	s := (d + time.Second - 1) / time.Second
	if s > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(s)
}

// plan returns the entries that program a valid service under id.
func plan(id uint32, s *datapath.Service, ids ids) (owned, error) {
	o := newOwned()
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", datapath.ErrInvalid, s.Key, fmt.Sprintf(format, args...))
	}

	var info lbSvcInfo
	info.AffinityNs = uint64(s.AffinityTimeout)
	info.HealthNodePort = s.HealthCheckNodePort
	info.KeyLen = uint16(len(s.Key))
	info.Nports = uint16(len(s.Ports))
	putString(info.Key[:], s.Key)
	o.meta[id] = info

	lists := []struct {
		kind  lbSpokeKind
		addrs []netip.Addr
	}{{kindCluster, s.ClusterIPs}, {kindExternal, s.ExternalIPs}, {kindLB, s.LoadBalancerIPs}}
	for _, l := range lists {
		for pos, a := range l.addrs {
			o.addrs[lbAddrKey{SvcId: id, Pos: uint16(pos), Kind: l.kind}] = toAddr(a)
		}
	}
	for pos, r := range s.SourceRanges {
		o.ranges[rangeKey(id, r)] = uint32(pos)
	}

	affinity := affinitySeconds(s.AffinityTimeout)
	for idx := range s.Ports {
		p := &s.Ports[idx]
		proto, err := toProto(p.Protocol)
		if err != nil {
			return o, invalid("port %q: %v", p.Name, err)
		}
		sets := [3]*datapath.Backends{&p.Internal, p.External, p.ExternalFromNode}
		var groups [6]uint32
		for set, b := range sets {
			for _, is6 := range []bool{false, true} {
				gi := set*2 + famIndex(!is6)
				if b == nil {
					// An absent set means the same as Internal.
					groups[gi] = groups[setInternal*2+famIndex(!is6)]
					continue
				}
				g := ids.group(groupIdent{s.Key, proto, p.Port, uint8(set), is6})
				groups[gi] = g
				planGroup(o.slots, id, g, b, is6, affinity, ids)
			}
		}

		var pi lbPortInfo
		pi.Groups = groups
		pi.Port = toPort(p.Port)
		pi.NodePort = toPort(p.NodePort)
		pi.Proto = proto
		if p.External != nil {
			pi.Sets |= setsExternal
		}
		if p.ExternalFromNode != nil {
			pi.Sets |= setsFromNode
		}
		pi.NameLen = uint8(len(p.Name))
		putString(pi.Name[:], p.Name)
		o.ports[lbPortKey{SvcId: id, Idx: uint32(idx)}] = pi

		if err := planFrontends(o.frontends, id, s, p, proto, groups); err != nil {
			return o, invalid("port %q: %v", p.Name, err)
		}
	}
	return o, nil
}

// frontendsOf returns the frontend entries of one service port.
func planFrontends(out map[lbSvcKey]lbSvcVal, id uint32, s *datapath.Service, p *datapath.Port, proto uint8, groups [6]uint32) error {
	group := func(set int, is4 bool) uint32 { return groups[set*2+famIndex(is4)] }
	add := func(k lbSvcKey, v lbSvcVal) error {
		if _, dup := out[k]; dup {
			return fmt.Errorf("address %s port %d used twice", fromAddr(k.Addr), p.Port)
		}
		out[k] = v
		return nil
	}
	for _, a := range s.ClusterIPs {
		k := lbSvcKey{Addr: toAddr(a), Port: toPort(p.Port), Proto: proto, Scope: scopeAddr}
		v := lbSvcVal{SvcId: id, GroupLocal: group(setInternal, a.Is4()), GroupExt: group(setInternal, a.Is4()), Kind: kindCluster}
		if err := add(k, v); err != nil {
			return err
		}
	}
	for _, a := range s.ExternalIPs {
		k := lbSvcKey{Addr: toAddr(a), Port: toPort(p.Port), Proto: proto, Scope: scopeAddr}
		v := lbSvcVal{SvcId: id, GroupLocal: group(setFromNode, a.Is4()), GroupExt: group(setExternal, a.Is4()), Kind: kindExternal}
		if err := add(k, v); err != nil {
			return err
		}
	}
	for _, a := range s.LoadBalancerIPs {
		k := lbSvcKey{Addr: toAddr(a), Port: toPort(p.Port), Proto: proto, Scope: scopeAddr}
		v := lbSvcVal{SvcId: id, GroupLocal: group(setFromNode, a.Is4()), GroupExt: group(setExternal, a.Is4()), Kind: kindLB}
		if len(s.SourceRanges) > 0 {
			v.Flags = svcFlagSourceRanges
		}
		if err := add(k, v); err != nil {
			return err
		}
	}
	if p.NodePort != 0 {
		for _, is4 := range []bool{true, false} {
			k := lbSvcKey{Addr: zeroAddr(is4), Port: toPort(p.NodePort), Proto: proto, Scope: scopeNodePort}
			v := lbSvcVal{SvcId: id, GroupLocal: group(setFromNode, is4), GroupExt: group(setExternal, is4), Kind: kindNodePort}
			if err := add(k, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// planGroup adds the slots of one backend set's endpoints of one family:
// a header at slot 0, active endpoints at 1..active, draining ones after.
// Endpoints keep the slot they had where they can, so that a change moves
// few of them (affinity and hashing follow the slot).
func planGroup(out map[lbSlotKey]lbSlotVal, svcID, group uint32, b *datapath.Backends, is6 bool, affinity uint32, ids ids) {
	type member struct {
		ident endpointIdent
		pos   int
	}
	var active, draining []member
	seen := map[netip.AddrPort]int{}
	for pos, ep := range b.Endpoints {
		if ep.Addr.Addr().Is6() != is6 {
			continue
		}
		m := member{endpointIdent{ep.Addr, seen[ep.Addr]}, pos}
		seen[ep.Addr]++
		if ep.Draining {
			draining = append(draining, m)
		} else {
			active = append(active, m)
		}
	}
	prev := ids.slots(group)
	assign := func(members []member, lo, hi uint32) {
		taken := map[uint32]bool{}
		slot := make([]uint32, len(members))
		for i, m := range members {
			if s, ok := prev[m.ident]; ok && s >= lo && s <= hi && !taken[s] {
				slot[i] = s
				taken[s] = true
			}
		}
		next := lo
		for i, m := range members {
			if slot[i] == 0 {
				for taken[next] {
					next++
				}
				slot[i] = next
				taken[next] = true
			}
			out[lbSlotKey{Group: group, Slot: slot[i]}] = lbSlotVal{
				Backend: ids.backend(m.ident.addr),
				SvcId:   svcID,
				Pos:     uint16(m.pos),
			}
		}
	}
	nActive, nTotal := uint32(len(active)), uint32(len(active)+len(draining))
	assign(active, 1, nActive)
	assign(draining, nActive+1, nTotal)
	out[lbSlotKey{Group: group, Slot: 0}] = lbSlotVal{
		SvcId:    svcID,
		Affinity: affinity,
		Active:   uint16(nActive),
		Total:    uint16(nTotal),
		NoEp:     toNoEndpoints(b.NoEndpoints),
	}
}
