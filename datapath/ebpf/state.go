package ebpf

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
)

// serviceState is one service as the maps hold it.
type serviceState struct {
	id      uint32
	key     string
	entries owned
	// svc is what the entries program, or nil when they are damaged
	// (incomplete, inconsistent, or not what any service would program).
	svc *datapath.Service
	// readBack: svc was decoded from the maps, not handed to Apply (whose
	// caller may still change it), so it is exactly what the maps program.
	readBack bool
	// groups are the idents index recorded for it, which unindex forgets.
	groups []groupIdent
}

// state mirrors the configuration maps. It is read from the kernel when a
// datapath opens its pins and whenever Programmed is called, and kept up to
// date by Apply.
type state struct {
	services map[string]*serviceState
	byID     map[uint32]*serviceState
	// orphans are entries no service owns; Apply deletes them.
	orphans    owned
	backends   map[uint32]lbBackend
	backendIDs map[netip.AddrPort]uint32
	refs       map[uint32]int // backend id -> slots that name it
	groups     map[groupIdent]uint32
	groupSlots map[uint32]map[endpointIdent]uint32
	usedGroups map[uint32]bool
	// next are where the searches for unused ids resume, so that an Apply
	// that adds one backend to 100,000 does not walk past every id in use.
	next ids3
	// unswept: the state was read back from the maps, and the next Apply
	// looks at every backend for ones that no slot names.
	unswept bool
}

// ids3 are the last ids handed out, by kind.
type ids3 struct{ group, backend, service uint32 }

// entriesOf splits dumped maps by owning service.
func newState(d *dump) *state {
	st := &state{
		services:   map[string]*serviceState{},
		byID:       map[uint32]*serviceState{},
		orphans:    newOwned(),
		backends:   d.backends,
		backendIDs: map[netip.AddrPort]uint32{},
		refs:       map[uint32]int{},
		groups:     map[groupIdent]uint32{},
		groupSlots: map[uint32]map[endpointIdent]uint32{},
		usedGroups: map[uint32]bool{},
		unswept:    true,
	}
	for id, b := range d.backends {
		st.backendIDs[netip.AddrPortFrom(fromAddr(b.Addr), fromPort(b.Port))] = id
	}
	for id, info := range d.meta {
		key := getString(info.Key[:], int(info.KeyLen))
		ss := &serviceState{id: id, key: key, entries: newOwned()}
		ss.entries.meta[id] = info
		if other, dup := st.services[key]; dup {
			// Two ids claim one service: keep the lower, the other's
			// entries are orphans.
			if other.id < id {
				maps.Copy(st.orphans.meta, ss.entries.meta)
				continue
			}
			maps.Copy(st.orphans.meta, other.entries.meta)
			delete(st.byID, other.id)
		}
		st.services[key] = ss
		st.byID[id] = ss
	}
	owner := func(id uint32) *owned {
		if ss, ok := st.byID[id]; ok {
			return &ss.entries
		}
		return &st.orphans
	}
	for k, v := range d.ports {
		owner(k.SvcId).ports[k] = v
	}
	for k, v := range d.addrs {
		owner(k.SvcId).addrs[k] = v
	}
	for k, v := range d.frontends {
		owner(v.SvcId).frontends[k] = v
	}
	for k, v := range d.slots {
		owner(v.SvcId).slots[k] = v
		st.usedGroups[k.Group] = true
		if k.Slot > 0 {
			st.refs[v.Backend]++
		}
	}
	for k, v := range d.ranges {
		owner(k.SvcId).ranges[k] = v
	}
	for _, ss := range st.services {
		ss.svc = decode(ss, d.backends)
		ss.readBack = ss.svc != nil
		st.index(ss)
	}
	return st
}

// index records the groups and slot positions of a service for the next
// plan.
func (st *state) index(ss *serviceState) {
	ss.groups = ss.groups[:0]
	for _, pi := range ss.entries.ports {
		for gi, g := range pi.Groups {
			set := uint8(gi / 2)
			if set == setExternal && pi.Sets&setsExternal == 0 || set == setFromNode && pi.Sets&setsFromNode == 0 {
				continue
			}
			ident := groupIdent{ss.key, pi.Proto, fromPort(pi.Port), set, gi%2 == 1}
			st.groups[ident] = g
			ss.groups = append(ss.groups, ident)
		}
	}
	type slotted struct {
		addr netip.AddrPort
		slot uint32
		pos  uint16
	}
	byGroup := map[uint32][]slotted{}
	for k, v := range ss.entries.slots {
		if k.Slot == 0 {
			continue
		}
		b, ok := st.backends[v.Backend]
		if !ok {
			continue
		}
		byGroup[k.Group] = append(byGroup[k.Group], slotted{netip.AddrPortFrom(fromAddr(b.Addr), fromPort(b.Port)), k.Slot, v.Pos})
	}
	for g, members := range byGroup {
		slices.SortFunc(members, func(a, b slotted) int { return cmp.Compare(a.pos, b.pos) })
		nth := map[netip.AddrPort]int{}
		m := map[endpointIdent]uint32{}
		for _, s := range members {
			m[endpointIdent{s.addr, nth[s.addr]}] = s.slot
			nth[s.addr]++
		}
		st.groupSlots[g] = m
	}
}

// unindex forgets what index recorded for a service.
func (st *state) unindex(ss *serviceState) {
	for _, gi := range ss.groups {
		if g, ok := st.groups[gi]; ok {
			delete(st.groups, gi)
			delete(st.groupSlots, g)
		}
	}
	ss.groups = nil
}

// decode reads a service back from its entries. It returns nil when the
// entries are not exactly what that service would program.
func decode(ss *serviceState, backends map[uint32]lbBackend) *datapath.Service {
	info, ok := ss.entries.meta[ss.id]
	if !ok {
		return nil
	}
	s := &datapath.Service{
		Key:                 ss.key,
		AffinityTimeout:     time.Duration(info.AffinityNs),
		HealthCheckNodePort: info.HealthNodePort,
	}
	if !decodeAddrs(ss, s) {
		return nil
	}
	if s.SourceRanges, ok = decodeRanges(ss); !ok {
		return nil
	}
	groups, ok := decodePorts(ss, info, s, backends)
	if !ok || !programsExactly(ss, s, groups) || s.Validate() != nil {
		return nil
	}
	return s
}

// positioned is a value read back with its position in its list.
type positioned[T any] struct {
	pos uint32
	v   T
}

// inOrder returns the values of l by position, or false when the positions
// are not 0, 1, 2, ...; an empty l is nil.
func inOrder[T any](l []positioned[T]) ([]T, bool) {
	if len(l) == 0 {
		return nil, true
	}
	slices.SortFunc(l, func(a, b positioned[T]) int { return cmp.Compare(a.pos, b.pos) })
	out := make([]T, len(l))
	for i, p := range l {
		if p.pos != uint32(i) {
			return nil, false
		}
		out[i] = p.v
	}
	return out, true
}

// decodeAddrs reads a service's cluster, external and load-balancer
// addresses back into s.
func decodeAddrs(ss *serviceState, s *datapath.Service) bool {
	var lists [4][]positioned[netip.Addr]
	for k, a := range ss.entries.addrs {
		if k.Kind < kindCluster || k.Kind > kindLB {
			return false
		}
		lists[k.Kind] = append(lists[k.Kind], positioned[netip.Addr]{uint32(k.Pos), fromAddr(a)})
	}
	var ok1, ok2, ok3 bool
	s.ClusterIPs, ok1 = inOrder(lists[kindCluster])
	s.ExternalIPs, ok2 = inOrder(lists[kindExternal])
	s.LoadBalancerIPs, ok3 = inOrder(lists[kindLB])
	return ok1 && ok2 && ok3
}

// decodeRanges reads a service's source ranges back.
func decodeRanges(ss *serviceState) ([]netip.Prefix, bool) {
	var ranges []positioned[netip.Prefix]
	for k, pos := range ss.entries.ranges {
		p, err := fromRangeKey(k)
		if err != nil {
			return nil, false
		}
		ranges = append(ranges, positioned[netip.Prefix]{pos, p})
	}
	return inOrder(ranges)
}

// decodePorts reads a service's ports back into s, and returns each port's
// slot groups.
func decodePorts(ss *serviceState, info lbSvcInfo, s *datapath.Service, backends map[uint32]lbBackend) ([][6]uint32, bool) {
	if len(ss.entries.ports) != int(info.Nports) {
		return nil, false
	}
	s.Ports = make([]datapath.Port, info.Nports)
	groups := make([][6]uint32, info.Nports)
	for k, pi := range ss.entries.ports {
		if k.Idx >= uint32(info.Nports) {
			return nil, false
		}
		p, ok := decodePort(ss, pi, backends)
		if !ok {
			return nil, false
		}
		s.Ports[k.Idx] = *p
		groups[k.Idx] = pi.Groups
	}
	return groups, true
}

// decodePort reads one port and its backend sets back.
func decodePort(ss *serviceState, pi lbPortInfo, backends map[uint32]lbBackend) (*datapath.Port, bool) {
	proto, err := fromProto(pi.Proto)
	if err != nil {
		return nil, false
	}
	p := &datapath.Port{
		Name:     getString(pi.Name[:], int(pi.NameLen)),
		Protocol: proto,
		Port:     fromPort(pi.Port),
		NodePort: fromPort(pi.NodePort),
	}
	set := func(idx int) (*datapath.Backends, bool) {
		return decodeSet(ss.entries.slots, pi.Groups[idx*2], pi.Groups[idx*2+1], backends)
	}
	internal, ok := set(setInternal)
	if !ok {
		return nil, false
	}
	p.Internal = *internal
	if pi.Sets&setsExternal != 0 {
		if p.External, ok = set(setExternal); !ok {
			return nil, false
		}
	}
	if pi.Sets&setsFromNode != 0 {
		if p.ExternalFromNode, ok = set(setFromNode); !ok {
			return nil, false
		}
	}
	return p, true
}

// programsExactly reports whether the forwarding entries and the slots'
// affinity are exactly what the decoded service programs.
func programsExactly(ss *serviceState, s *datapath.Service, groups [][6]uint32) bool {
	want := map[lbSvcKey]lbSvcVal{}
	for i := range s.Ports {
		proto, _ := toProto(s.Ports[i].Protocol)
		if err := planFrontends(want, ss.id, s, &s.Ports[i], proto, groups[i]); err != nil {
			return false
		}
	}
	if !maps.Equal(want, ss.entries.frontends) {
		return false
	}
	affinity := affinitySeconds(s.AffinityTimeout)
	for k, v := range ss.entries.slots {
		if k.Slot == 0 && v.Affinity != affinity {
			return false
		}
	}
	return true
}

// decodeSet reads one backend set from its IPv4 and IPv6 groups.
func decodeSet(slots map[lbSlotKey]lbSlotVal, g4, g6 uint32, backends map[uint32]lbBackend) (*datapath.Backends, bool) {
	type positioned struct {
		pos int
		ep  datapath.Endpoint
	}
	var eps []positioned
	var noEp lbSpokeNoEndpoints
	for i, g := range []uint32{g4, g6} {
		hdr, ok := slots[lbSlotKey{Group: g}]
		if !ok {
			return nil, false
		}
		if i == 0 {
			noEp = hdr.NoEp
		} else if hdr.NoEp != noEp {
			return nil, false
		}
		for slot := uint32(1); slot <= uint32(hdr.Total); slot++ {
			v, ok := slots[lbSlotKey{Group: g, Slot: slot}]
			if !ok {
				return nil, false
			}
			b, ok := backends[v.Backend]
			if !ok {
				return nil, false
			}
			addr := netip.AddrPortFrom(fromAddr(b.Addr), fromPort(b.Port))
			if addr.Addr().Is4() != (i == 0) {
				return nil, false
			}
			eps = append(eps, positioned{int(v.Pos), datapath.Endpoint{Addr: addr, Draining: slot > uint32(hdr.Active)}})
		}
	}
	slices.SortFunc(eps, func(a, b positioned) int { return cmp.Compare(a.pos, b.pos) })
	out := &datapath.Backends{NoEndpoints: fromNoEndpoints(noEp), Endpoints: make([]datapath.Endpoint, len(eps))}
	for i, e := range eps {
		if e.pos != i {
			return nil, false
		}
		out.Endpoints[i] = e.ep
	}
	return out, true
}

// planner hands out ids for one Apply without changing the state until the
// Apply commits. Ids in use before the Apply are never handed out, even if
// the Apply frees them, because its deletions run after its writes.
type planner struct {
	st          *state
	newGroups   map[groupIdent]uint32
	newBackends map[netip.AddrPort]uint32
	newServices map[uint32]bool
	takenGroups map[uint32]bool
	takenBackends,
	takenServices map[uint32]bool
	next ids3
}

func newPlanner(st *state) *planner {
	return &planner{
		st:            st,
		newGroups:     map[groupIdent]uint32{},
		newBackends:   map[netip.AddrPort]uint32{},
		newServices:   map[uint32]bool{},
		takenGroups:   map[uint32]bool{},
		takenBackends: map[uint32]bool{},
		takenServices: map[uint32]bool{},
		next:          st.next,
	}
}

func (p *planner) group(g groupIdent) uint32 {
	if id, ok := p.st.groups[g]; ok {
		return id
	}
	if id, ok := p.newGroups[g]; ok {
		return id
	}
	id := allocate(&p.next.group, func(id uint32) bool { return p.st.usedGroups[id] || p.takenGroups[id] })
	p.takenGroups[id] = true
	p.newGroups[g] = id
	return id
}

func (p *planner) backend(a netip.AddrPort) uint32 {
	if id, ok := p.st.backendIDs[a]; ok {
		return id
	}
	if id, ok := p.newBackends[a]; ok {
		return id
	}
	id := allocate(&p.next.backend, func(id uint32) bool {
		_, used := p.st.backends[id]
		return used || p.takenBackends[id]
	})
	p.takenBackends[id] = true
	p.newBackends[a] = id
	return id
}

func (p *planner) service() uint32 {
	id := allocate(&p.next.service, func(id uint32) bool {
		_, used := p.st.byID[id]
		_, orphan := p.st.orphans.meta[id]
		return used || orphan || p.takenServices[id]
	})
	p.takenServices[id] = true
	return id
}

func (p *planner) slots(group uint32) map[endpointIdent]uint32 {
	return p.st.groupSlots[group]
}

// allocate returns the first unused id after *next, wrapping to 1.
func allocate(next *uint32, used func(uint32) bool) uint32 {
	for {
		*next++
		if *next == 0 {
			*next = 1
		}
		if !used(*next) {
			return *next
		}
	}
}

// backendsOf counts the slots of entries per backend.
func backendsOf(o owned) map[uint32]int {
	refs := map[uint32]int{}
	for k, v := range o.slots {
		if k.Slot > 0 {
			refs[v.Backend]++
		}
	}
	return refs
}

// String names a group for errors.
func (g groupIdent) String() string {
	return fmt.Sprintf("%s %d/%d set %d v6=%t", g.service, g.port, g.proto, g.set, g.is6)
}
