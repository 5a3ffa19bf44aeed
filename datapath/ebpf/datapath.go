package ebpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/netns"
)

var _ datapath.Datapath = (*Datapath)(nil)

// FullError is returned by Apply when a map has no room for a change. It
// wraps datapath.ErrFull.
type FullError struct {
	Map        string
	Need, Size int
}

func (e *FullError) Error() string {
	return fmt.Sprintf("map %s: %d entries needed, %d fit: %v", e.Map, e.Need, e.Size, datapath.ErrFull)
}

func (e *FullError) Unwrap() error { return datapath.ErrFull }

// Datapath is the eBPF implementation of datapath.Datapath.
type Datapath struct {
	opts Options

	mu sync.Mutex
	// open is held (shared) by reads of the maps made without mu, and by
	// Close, so that no read outlives the maps' file descriptors.
	open  sync.RWMutex
	objs  lbObjects
	stamp *ebpf.Map
	sizes map[string]int
	// state mirrors the maps; nil until the first Apply reads them back,
	// so that opening pinned maps costs no read of them.
	state  *state
	writes uint64 // Applies that wrote to the maps
	counts map[string]int
	owners map[lbSvcKey]uint32 // frontend -> service id
	attach *attachments
	// reused: the programs are those an earlier datapath of this build
	// pinned, not loaded again.
	reused  bool
	node    datapath.Node
	nodeSet bool // SetNode was called
	devices []string
	closed  bool
}

// New opens the datapath pinned under opts.PinPath, creating it if there
// is none, and attaches its programs. What is already pinned is adopted as
// it is: the maps keep every service and flow (read back by the first
// Apply, not here), the SNAT sources stay those of the node until SetNode,
// and the programs attached to the cgroup and devices are replaced
// atomically by this build's: those an earlier datapath of this build
// pinned, or else loaded (and verified by the kernel) afresh.
func New(opts Options) (*Datapath, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("ebpf datapath options: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("removing the memlock limit: %w", err)
	}
	if err := EnsureBPFFS(opts.PinPath); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.PinPath, 0o700); err != nil {
		return nil, fmt.Errorf("creating pin folder: %w", err)
	}

	spec, err := loadLb()
	if err != nil {
		return nil, err
	}
	d := &Datapath{opts: opts, sizes: opts.mapSizes()}
	for name, m := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // .rodata: the programs' constant tables
		}
		size, ok := d.sizes[name]
		if !ok {
			return nil, fmt.Errorf("map %s has no size", name)
		}
		m.MaxEntries = uint32(size)
	}
	loadOpts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinPath}}
	err = spec.LoadAndAssign(&d.objs.lbMaps, loadOpts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("the maps pinned in %s do not match this build or its map sizes (remove them with the cleanup command, which also stops every flow through them): %w", opts.PinPath, err)
	}
	if err != nil {
		return nil, fmt.Errorf("loading the eBPF maps: %w", err)
	}
	if d.reused, err = d.loadPrograms(spec, loadOpts); err != nil {
		d.objs.Close()
		return nil, err
	}
	if d.stamp, err = openStamp(opts.PinPath); err != nil {
		d.objs.Close()
		return nil, err
	}
	if err := d.writeConfig(); err != nil {
		d.objs.Close()
		d.stamp.Close()
		return nil, err
	}
	d.attach = newAttachments(opts, &d.objs)
	if err := d.attach.cgroup(); err != nil {
		d.Close()
		return nil, err
	}
	if len(opts.Devices) > 0 {
		if err := d.attach.devices(opts.Devices); err != nil {
			d.Close()
			return nil, err
		}
		d.devices = opts.Devices
	}
	if len(opts.PodDevices) > 0 {
		if err := d.attach.syncPods(); err != nil {
			d.Close()
			return nil, err
		}
		d.attach.watch()
	}
	return d, nil
}

// lock takes the datapath's lock unless ctx is done or the datapath is
// closed; the caller unlocks d.mu.
func (d *Datapath) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return errClosed
	}
	return nil
}

// Close releases the datapath's file descriptors. Everything pinned stays
// attached and keeps forwarding; New adopts it again.
func (d *Datapath) Close() error {
	d.open.Lock()
	defer d.open.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if d.attach != nil {
		errs = append(errs, d.attach.close())
	}
	errs = append(errs, d.objs.Close(), d.stamp.Close())
	return errors.Join(errs...)
}

// Name implements datapath.Datapath.
func (d *Datapath) Name() string { return "ebpf" }

// SetNode implements datapath.Datapath: NodePorts answer on the node's
// addresses, and flows sent to another node leave from the first address
// of their family. Without configured devices, the tc programs follow the
// interfaces that hold these addresses.
func (d *Datapath) SetNode(ctx context.Context, node datapath.Node) error {
	for _, a := range node.Addresses {
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() {
			return fmt.Errorf("%w: node %s: bad address %q", datapath.ErrInvalid, node.Name, a)
		}
	}
	if len(node.Addresses) > d.sizes[lbMapNodes] {
		return &FullError{Map: lbMapNodes, Need: len(node.Addresses), Size: d.sizes[lbMapNodes]}
	}
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.mu.Unlock()
	want := map[lbNodeKey]uint32{}
	for _, a := range node.Addresses {
		want[lbNodeKey{Addr: toAddr(a)}] = 1
	}
	have, err := readAll[lbNodeKey, uint32](d.objs.Nodes)
	if err != nil {
		return err
	}
	c := newChange[lbNodeKey, uint32]()
	c.add(have, want)
	if err := putAll(d.objs.Nodes, c.put); err != nil {
		return err
	}
	if err := deleteAll(d.objs.Nodes, c.deleted()); err != nil {
		return err
	}
	d.node, d.nodeSet = node, true
	if err := d.writeConfig(); err != nil {
		return err
	}
	if len(d.opts.Devices) == 0 {
		devs, err := netns.DevicesHolding(d.opts.NetNS, node.Addresses)
		if err != nil {
			return err
		}
		if err := d.attach.devices(devs); err != nil {
			return err
		}
		d.devices = devs
		if len(d.opts.PodDevices) > 0 {
			// A device that stopped being external may be a pod device.
			return d.attach.syncPods()
		}
	}
	return nil
}

// writeConfig writes the SNAT port range and sources: the node's first
// address of each family once SetNode was called, before that those the
// pinned config holds, so that a restarted agent keeps them.
func (d *Datapath) writeConfig() error {
	var cfg lbCfgVal
	if !d.nodeSet {
		if err := d.objs.Config.Lookup(uint32(0), &cfg); err != nil {
			return fmt.Errorf("reading map config: %w", err)
		}
	}
	for _, a := range slices.Backward(d.node.Addresses) {
		if a.Is4() {
			cfg.Node4 = toAddr(a)
		} else {
			cfg.Node6 = toAddr(a)
		}
	}
	cfg.SnatMin, cfg.SnatMax = d.opts.SNATPortMin, d.opts.SNATPortMax
	if err := d.objs.Config.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("writing map config: %w", err)
	}
	return nil
}

var errClosed = errors.New("ebpf datapath is closed")

// mirror is what the configuration maps hold, read back: the state, and
// the entry counts and frontend owners that go with it.
type mirror struct {
	state  *state
	counts map[string]int
	owners map[lbSvcKey]uint32
}

// readMirror reads the configuration maps back.
func readMirror(m *lbMaps) (*mirror, error) {
	dm, err := readDump(m)
	if err != nil {
		return nil, err
	}
	mi := &mirror{state: newState(dm), owners: map[lbSvcKey]uint32{}}
	mi.counts = map[string]int{
		lbMapSvcMeta:   len(dm.meta),
		lbMapPortMeta:  len(dm.ports),
		lbMapSvcAddrs:  len(dm.addrs),
		lbMapServices:  len(dm.frontends),
		lbMapSlots:     len(dm.slots),
		lbMapSrcRanges: len(dm.ranges),
		lbMapBackends:  len(dm.backends),
	}
	for k, v := range dm.frontends {
		if _, ok := mi.state.byID[v.SvcId]; ok {
			mi.owners[k] = v.SvcId
		}
	}
	return mi, nil
}

// install makes mi the datapath's view of its maps.
func (d *Datapath) install(mi *mirror) {
	d.state, d.counts, d.owners = mi.state, mi.counts, mi.owners
}

// reload reads the configuration maps into the state; under d.mu.
func (d *Datapath) reload() error {
	mi, err := readMirror(&d.objs.lbMaps)
	if err != nil {
		return err
	}
	d.install(mi)
	return nil
}

// Programmed implements datapath.Datapath. It reads the maps back and takes
// what it read as its state from then on; a service whose entries are
// incomplete or inconsistent is left out, so that the agent programs it
// again. At 10,000 services reading back takes hundreds of milliseconds, so
// the maps are read without the datapath's lock and Apply goes on
// meanwhile; a read during which an Apply wrote is not taken (it may hold
// half of that Apply) and is done again, the last time under the lock.
func (d *Datapath) Programmed(ctx context.Context) (map[string]*datapath.Service, error) {
	for range unlockedReads {
		d.open.RLock() // before mu, as Close takes them
		if err := d.lock(ctx); err != nil {
			d.open.RUnlock()
			return nil, err
		}
		writes := d.writes
		d.mu.Unlock()
		mi, readErr := readMirror(&d.objs.lbMaps)
		d.open.RUnlock()
		if err := d.lock(ctx); err != nil {
			return nil, err
		}
		if readErr == nil && d.writes == writes {
			d.install(mi)
			out := d.programmed()
			d.mu.Unlock()
			return out, nil
		}
		d.mu.Unlock()
	}
	if err := d.lock(ctx); err != nil {
		return nil, err
	}
	defer d.mu.Unlock()
	if err := d.reload(); err != nil {
		return nil, err
	}
	return d.programmed(), nil
}

// unlockedReads is how many times Programmed reads the maps without the
// lock before it reads them under it.
const unlockedReads = 2

// programmed returns the services the state holds whole; under d.mu.
func (d *Datapath) programmed() map[string]*datapath.Service {
	out := make(map[string]*datapath.Service, len(d.state.services))
	for key, ss := range d.state.services {
		if ss.svc != nil {
			out[key] = ss.svc
		}
	}
	return out
}

// update is one service's part of an Apply.
type update struct {
	key    string
	id     uint32
	old    *serviceState // nil: new service
	after  owned         // empty: removal
	svc    *datapath.Service
	remove bool
}

// changes are the writes of one Apply, per map.
type changes struct {
	meta      *change[uint32, lbSvcInfo]
	ports     *change[lbPortKey, lbPortInfo]
	addrs     *change[lbAddrKey, lbAddr]
	frontends *change[lbSvcKey, lbSvcVal]
	slots     *change[lbSlotKey, lbSlotVal]
	ranges    *change[lbRangeKey, uint32]
	backends  *change[uint32, lbBackend]
}

func newChanges() *changes {
	return &changes{
		meta:      newChange[uint32, lbSvcInfo](),
		ports:     newChange[lbPortKey, lbPortInfo](),
		addrs:     newChange[lbAddrKey, lbAddr](),
		frontends: newChange[lbSvcKey, lbSvcVal](),
		slots:     newChange[lbSlotKey, lbSlotVal](),
		ranges:    newChange[lbRangeKey, uint32](),
		backends:  newChange[uint32, lbBackend](),
	}
}

func (c *changes) add(before, after owned) {
	c.meta.add(before.meta, after.meta)
	c.ports.add(before.ports, after.ports)
	c.addrs.add(before.addrs, after.addrs)
	c.frontends.add(before.frontends, after.frontends)
	c.slots.add(before.slots, after.slots)
	c.ranges.add(before.ranges, after.ranges)
}

func (c *changes) drop(o owned) {
	c.meta.drop(o.meta)
	c.ports.drop(o.ports)
	c.addrs.drop(o.addrs)
	c.frontends.drop(o.frontends)
	c.slots.drop(o.slots)
	c.ranges.drop(o.ranges)
}

// Apply implements datapath.Datapath. It computes every map's writes first
// and refuses, changing nothing, a change that is invalid, claims another
// service's address, or does not fit.
func (d *Datapath) Apply(ctx context.Context, upsert []*datapath.Service, remove []string) error {
	for _, s := range upsert {
		if err := s.Validate(); err != nil {
			return err
		}
		if err := checkLayout(s); err != nil {
			return err
		}
	}
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.mu.Unlock()
	if d.state == nil {
		if err := d.reload(); err != nil {
			return err
		}
	}
	st := d.state
	updates, p, err := planUpdates(st, upsert, remove)
	if err != nil {
		return err
	}
	if err := d.checkOwners(updates); err != nil {
		return err
	}
	c, refs := diff(st, updates, p)
	if err := d.checkRoom(c); err != nil {
		return err
	}
	d.writes++
	if err := d.write(c); err != nil {
		// The maps are somewhere between before and after: read them back.
		if rerr := d.reload(); rerr != nil {
			return errors.Join(err, rerr)
		}
		return err
	}
	d.commit(updates, c, refs)
	st.next = p.next
	st.unswept = false
	return nil
}

// planUpdates plans, without touching the kernel, what each upserted and
// removed service owns afterwards. The last upsert of a key wins; a key
// both upserted and removed is upserted.
func planUpdates(st *state, upsert []*datapath.Service, remove []string) ([]update, *planner, error) {
	desired := map[string]*datapath.Service{}
	var order []string
	for _, s := range upsert {
		if _, seen := desired[s.Key]; !seen {
			order = append(order, s.Key)
		}
		desired[s.Key] = s
	}
	var updates []update
	removing := map[string]bool{}
	for _, key := range remove {
		if _, up := desired[key]; up || removing[key] {
			continue
		}
		removing[key] = true
		if ss, ok := st.services[key]; ok {
			updates = append(updates, update{key: key, id: ss.id, old: ss, after: newOwned(), remove: true})
		}
	}
	p := newPlanner(st)
	for _, key := range order {
		u := update{key: key, old: st.services[key], svc: desired[key]}
		if u.old != nil && u.old.readBack && datapath.Equal(u.old.svc, u.svc) {
			// The maps already program it, as after an agent restart:
			// nothing to plan or write.
			continue
		}
		if u.old != nil {
			u.id = u.old.id
		} else {
			u.id = p.service()
		}
		var err error
		if u.after, err = plan(u.id, u.svc, p); err != nil {
			return nil, nil, err
		}
		updates = append(updates, u)
	}
	return updates, p, nil
}

// diff computes, without touching the kernel, the writes that take the
// maps from st to the planned updates, and how each backend's count of
// slots naming it changes.
func diff(st *state, updates []update, p *planner) (*changes, map[uint32]int) {
	c := newChanges()
	refs := map[uint32]int{}
	for _, u := range updates {
		before := newOwned()
		if u.old != nil {
			before = u.old.entries
		}
		c.add(before, u.after)
		for id, n := range backendsOf(before) {
			refs[id] -= n
		}
		for id, n := range backendsOf(u.after) {
			refs[id] += n
		}
	}
	c.drop(st.orphans)
	for id, n := range backendsOf(st.orphans) {
		refs[id] -= n
	}
	for a, id := range p.newBackends {
		if refs[id] > 0 {
			c.backends.put[id] = lbBackend{Addr: toAddr(a.Addr()), Port: toPort(a.Port()), Family: uint8(family(a.Addr()))}
			c.backends.grow++
		}
	}
	// A backend goes when no slot names it any more: only those whose
	// count this Apply changes can go, but a state read back from the maps
	// may hold backends nothing names since before.
	unnamed := func(id uint32) {
		if _, ok := st.backends[id]; ok && st.refs[id]+refs[id] <= 0 {
			c.backends.del[id] = struct{}{}
		}
	}
	if st.unswept {
		for id := range st.backends {
			unnamed(id)
		}
	} else {
		for id := range refs {
			unnamed(id)
		}
	}
	c.backends.grow -= len(c.backends.del)
	return c, refs
}

// checkOwners refuses an Apply that would let two services claim one
// frontend.
func (d *Datapath) checkOwners(updates []update) error {
	releasing := map[uint32]bool{}
	for _, u := range updates {
		releasing[u.id] = true
	}
	claimed := map[lbSvcKey]string{}
	for _, u := range updates {
		for k := range u.after.frontends {
			if other, ok := claimed[k]; ok {
				return fmt.Errorf("%w %s: %s port %d is also programmed by %s", datapath.ErrInvalid, u.key, fromAddr(k.Addr), fromPort(k.Port), other)
			}
			claimed[k] = u.key
			if owner, ok := d.owners[k]; ok && !releasing[owner] {
				return fmt.Errorf("%w %s: %s port %d is already programmed by %s", datapath.ErrInvalid, u.key, fromAddr(k.Addr), fromPort(k.Port), d.state.byID[owner].key)
			}
		}
	}
	return nil
}

// checkRoom refuses changes that would overfill a map.
func (d *Datapath) checkRoom(c *changes) error {
	grow := map[string]int{
		lbMapSvcMeta:   c.meta.grow,
		lbMapPortMeta:  c.ports.grow,
		lbMapSvcAddrs:  c.addrs.grow,
		lbMapServices:  c.frontends.grow,
		lbMapSlots:     c.slots.grow,
		lbMapSrcRanges: c.ranges.grow,
		lbMapBackends:  c.backends.grow,
	}
	for _, name := range []string{lbMapServices, lbMapBackends, lbMapSlots, lbMapSrcRanges, lbMapSvcMeta, lbMapPortMeta, lbMapSvcAddrs} {
		need := d.counts[name] + grow[name]
		if need > d.sizes[name] {
			if d.opts.OnFull != nil {
				d.opts.OnFull(name)
			}
			return &FullError{Map: name, Need: need, Size: d.sizes[name]}
		}
	}
	return nil
}

// write applies changes in an order that never lets a program see a
// frontend without its backends: backends, then slots (headers last, so a
// group grows only once its new slots exist), then metadata and frontends;
// deletions in the reverse order.
func (d *Datapath) write(c *changes) error {
	m := &d.objs.lbMaps
	slots, headers := map[lbSlotKey]lbSlotVal{}, map[lbSlotKey]lbSlotVal{}
	for k, v := range c.slots.put {
		if k.Slot == 0 {
			headers[k] = v
		} else {
			slots[k] = v
		}
	}
	steps := []func() error{
		func() error { return putAll(m.Backends, c.backends.put) },
		func() error { return putAll(m.Slots, slots) },
		func() error { return putAll(m.Slots, headers) },
		func() error { return putAll(m.SrcRanges, c.ranges.put) },
		func() error { return putAll(m.SvcMeta, c.meta.put) },
		func() error { return putAll(m.PortMeta, c.ports.put) },
		func() error { return putAll(m.SvcAddrs, c.addrs.put) },
		func() error { return putAll(m.Services, c.frontends.put) },
		func() error { return deleteAll(m.Services, c.frontends.deleted()) },
		func() error { return deleteAll(m.SvcAddrs, c.addrs.deleted()) },
		func() error { return deleteAll(m.PortMeta, c.ports.deleted()) },
		func() error { return deleteAll(m.SvcMeta, c.meta.deleted()) },
		func() error { return deleteAll(m.SrcRanges, c.ranges.deleted()) },
		func() error { return deleteAll(m.Slots, c.slots.deleted()) },
		func() error { return deleteAll(m.Backends, c.backends.deleted()) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// commit brings the state up to date with a written Apply.
func (d *Datapath) commit(updates []update, c *changes, refs map[uint32]int) {
	st := d.state
	for _, u := range updates {
		if u.old != nil {
			st.unindex(u.old)
			delete(st.byID, u.id)
			delete(st.services, u.key)
			for k := range u.old.entries.frontends {
				if d.owners[k] == u.id {
					delete(d.owners, k)
				}
			}
			for k := range u.old.entries.slots {
				if k.Slot == 0 {
					delete(st.usedGroups, k.Group)
				}
			}
		}
	}
	for k := range st.orphans.slots {
		delete(st.usedGroups, k.Group)
	}
	st.orphans = newOwned()
	for _, u := range updates {
		if u.remove {
			continue
		}
		ss := &serviceState{id: u.id, key: u.key, entries: u.after, svc: u.svc}
		st.services[u.key] = ss
		st.byID[u.id] = ss
		for k := range u.after.frontends {
			d.owners[k] = u.id
		}
		for k := range u.after.slots {
			st.usedGroups[k.Group] = true
		}
	}
	for id, v := range c.backends.put {
		st.backends[id] = v
		st.backendIDs[netip.AddrPortFrom(fromAddr(v.Addr), fromPort(v.Port))] = id
	}
	for id, n := range refs {
		st.refs[id] += n
	}
	for id := range c.backends.del {
		v := st.backends[id]
		delete(st.backendIDs, netip.AddrPortFrom(fromAddr(v.Addr), fromPort(v.Port)))
		delete(st.backends, id)
		delete(st.refs, id)
	}
	for _, u := range updates {
		if !u.remove {
			st.index(st.services[u.key])
		}
	}
	d.counts[lbMapSvcMeta] += c.meta.grow
	d.counts[lbMapPortMeta] += c.ports.grow
	d.counts[lbMapSvcAddrs] += c.addrs.grow
	d.counts[lbMapServices] += c.frontends.grow
	d.counts[lbMapSlots] += c.slots.grow
	d.counts[lbMapSrcRanges] += c.ranges.grow
	d.counts[lbMapBackends] += c.backends.grow
}
