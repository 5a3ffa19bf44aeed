package ipvs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/internal/netns"
)

var _ datapath.Datapath = (*Datapath)(nil)

// DefaultDevice holds the service addresses, as kube-proxy's kube-ipvs0.
const DefaultDevice = "spoke-ipvs0"

// ErrNoIPVS is returned by New when the kernel has no IPVS.
var ErrNoIPVS = errors.New("the kernel has no IPVS (the ip_vs module is not loaded)")

// Options configure an IPVS datapath.
type Options struct {
	// NetNS is the network namespace file to program; the caller's when
	// empty.
	NetNS string
	// Device is the dummy interface that holds the service addresses;
	// DefaultDevice when empty.
	Device string
	// Devices are the interfaces towards other nodes: traffic from outside
	// arriving on one and sent to a backend on another node through one is
	// masqueraded. When empty, the interfaces that hold the node's
	// addresses, as SetNode finds them.
	Devices []string
}

// Datapath is the IPVS implementation of datapath.Datapath. It owns the
// namespace's IPVS virtual servers, the addresses of its dummy device and
// the nftables table spoke-ipvs.
type Datapath struct {
	opts Options

	mu       sync.Mutex
	ipvs     *ipvs.Handle
	nl       *netlink.Handle
	dev      netlink.Link
	node     []netip.Addr
	devices  []string // towards other nodes
	services map[string]*datapath.Service
	plans    map[string][]virtual
	owners   map[vkey]string
	addrRefs map[netip.Addr]int
	// marks are the firewall marks of the frontends whose traffic from
	// the node has a virtual server of its own.
	marks map[vkey]uint32
	table *table
	// rules is what the table was last replaced with; nil when that is
	// not known or the kernel's table was found to differ.
	rules *ruleset
	// leftovers are what the last Programmed found in the kernel that no
	// service planned, by the key it reported them under, with how to
	// remove each.
	leftovers map[string]func() error
}

// leftoverPrefix starts the keys under which Programmed reports what it
// finds in the kernel that no service planned: a virtual server or an
// address an earlier process left, or rules someone changed. No service
// key ("namespace/name") looks like one; removing such a key removes what
// it names.
const leftoverPrefix = "ipvs leftover: "

// New opens the IPVS table of opts.NetNS and makes sure the dummy device
// exists. What is already programmed stays until Apply replaces it.
func New(opts Options) (*Datapath, error) {
	if opts.Device == "" {
		opts.Device = DefaultDevice
	}
	nl, err := netns.Handle(opts.NetNS, unix.NETLINK_ROUTE, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, err
	}
	if _, err := nl.GenlFamilyGet("IPVS"); err != nil {
		nl.Close()
		return nil, fmt.Errorf("%w: %w", ErrNoIPVS, err)
	}
	h, err := ipvs.New(opts.NetNS)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("opening IPVS: %w", err)
	}
	d := &Datapath{
		opts: opts, ipvs: h, nl: nl, devices: slices.Clone(opts.Devices),
		services: map[string]*datapath.Service{}, plans: map[string][]virtual{},
		owners: map[vkey]string{}, addrRefs: map[netip.Addr]int{}, marks: map[vkey]uint32{},
		table: &table{netns: opts.NetNS}, leftovers: map[string]func() error{},
	}
	// The nftables table an earlier process left keeps its rules (source
	// ranges among them) until the first Apply replaces it.
	if err := d.setup(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// setup makes the dummy device and sets IPVS's sysctls.
func (d *Datapath) setup() error {
	dev, err := d.nl.LinkByName(d.opts.Device)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("looking up %s: %w", d.opts.Device, err)
		}
		if err := d.nl.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: d.opts.Device}}); err != nil {
			return fmt.Errorf("adding %s: %w", d.opts.Device, err)
		}
		if dev, err = d.nl.LinkByName(d.opts.Device); err != nil {
			return err
		}
	}
	if err := d.nl.LinkSetUp(dev); err != nil {
		return fmt.Errorf("bringing %s up: %w", d.opts.Device, err)
	}
	d.dev = dev
	return netns.Do(d.opts.NetNS, func() error {
		for k, v := range sysctls {
			if err := os.WriteFile("/proc/sys/net/ipv4/vs/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("setting net.ipv4.vs.%s: %w", k, err)
			}
		}
		return nil
	})
}

// sysctls are IPVS's settings as kube-proxy makes them: connection
// tracking, which translating connections the node itself opens needs, and
// connections to removed or zero-weight real servers ending at once rather
// than lingering on a backend that is gone.
var sysctls = map[string]string{
	"conntrack":                 "1",
	"expire_nodest_conn":        "1",
	"expire_quiescent_template": "1",
}

// Close releases the handles. What is programmed stays and keeps
// forwarding.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ipvs != nil {
		d.ipvs.Close()
		d.ipvs = nil
	}
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	return nil
}

// Name implements datapath.Datapath.
func (d *Datapath) Name() string { return "ipvs" }

// SetNode implements datapath.Datapath: node ports are virtual servers on
// each node address.
func (d *Datapath) SetNode(ctx context.Context, node datapath.Node) error {
	for _, a := range node.Addresses {
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() || a.IsUnspecified() {
			return fmt.Errorf("%w: node %s: bad address %q", datapath.ErrInvalid, node.Name, a)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if slices.Equal(d.node, node.Addresses) {
		return nil
	}
	d.node = slices.Clone(node.Addresses)
	if len(d.opts.Devices) == 0 {
		devs, err := netns.DevicesHolding(d.opts.NetNS, d.node)
		if err != nil {
			return err
		}
		d.devices = devs
	}
	var all []*datapath.Service
	for _, s := range d.services {
		all = append(all, s)
	}
	return d.apply(ctx, all, nil)
}

// Apply implements datapath.Datapath.
func (d *Datapath) Apply(ctx context.Context, upsert []*datapath.Service, remove []string) error {
	for _, s := range upsert {
		if err := s.Validate(); err != nil {
			return err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.apply(ctx, upsert, remove)
}

func (d *Datapath) apply(ctx context.Context, upsert []*datapath.Service, remove []string) error {
	if d.ipvs == nil {
		return errors.New("ipvs datapath is closed")
	}
	remove, leftovers := splitLeftovers(remove)
	plans, err := d.plan(upsert, remove)
	if err != nil {
		return err
	}
	target := maps.Clone(d.plans)
	for _, k := range remove {
		delete(target, k)
	}
	maps.Copy(target, plans)
	marks, err := assignMarks(d.marks, target)
	if err != nil {
		return err
	}
	if err := d.removeLeftovers(leftovers); err != nil {
		return err
	}
	// Removals first, so that a virtual server moving between services is
	// free when its new owner takes it.
	for _, k := range remove {
		if plans[k] != nil {
			continue
		}
		if err := d.release(servers(d.plans[k], d.marks), nil); err != nil {
			return fmt.Errorf("removing %s: %w", k, err)
		}
		if err := d.holdAddresses(d.plans[k], nil); err != nil {
			return fmt.Errorf("removing %s: %w", k, err)
		}
		delete(d.services, k)
		delete(d.plans, k)
	}
	for _, s := range upsert {
		if err := d.release(servers(d.plans[s.Key], d.marks), servers(plans[s.Key], marks)); err != nil {
			return fmt.Errorf("programming %s: %w", s.Key, err)
		}
	}
	d.marks = marks
	// The table changes between the deletions and the additions: a
	// virtual server never exists without its source ranges and drops.
	if err := d.syncRules(buildRuleset(target, marks, d.node, d.devices)); err != nil {
		return err
	}
	for _, s := range upsert {
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, v := range servers(plans[s.Key], marks) {
			if err := d.program(&v); err != nil {
				return fmt.Errorf("programming %s: %s: %w", s.Key, v.key, err)
			}
			if v.key.mark == 0 {
				d.owners[v.key] = s.Key
			}
		}
		if err := d.holdAddresses(d.plans[s.Key], plans[s.Key]); err != nil {
			return fmt.Errorf("programming %s: %w", s.Key, err)
		}
		d.services[s.Key] = s
		d.plans[s.Key] = plans[s.Key]
	}
	return nil
}

// plan returns the plans of the upserted services, or, changing nothing,
// an error for two services on one virtual server.
func (d *Datapath) plan(upsert []*datapath.Service, remove []string) (map[string][]virtual, error) {
	changing := map[string]bool{}
	for _, s := range upsert {
		changing[s.Key] = true
	}
	for _, k := range remove {
		changing[k] = true
	}
	plans := map[string][]virtual{}
	claimed := map[vkey]string{}
	for _, s := range upsert {
		plans[s.Key] = plan(s, d.node)
		for _, v := range plans[s.Key] {
			if other, ok := claimed[v.key]; ok && other != s.Key {
				return nil, fmt.Errorf("%w %s: %s is also programmed by %s", datapath.ErrInvalid, s.Key, v.key, other)
			}
			claimed[v.key] = s.Key
			if owner, ok := d.owners[v.key]; ok && owner != s.Key && !changing[owner] {
				return nil, fmt.Errorf("%w %s: %s is already programmed by %s", datapath.ErrInvalid, s.Key, v.key, owner)
			}
		}
	}
	return plans, nil
}

// syncRules replaces the nftables table with rs unless it already holds
// it.
func (d *Datapath) syncRules(rs *ruleset) error {
	if d.rules != nil && reflect.DeepEqual(d.rules, rs) {
		return nil
	}
	d.rules = nil
	if err := d.table.replace(rs); err != nil {
		return err
	}
	d.rules = rs
	return nil
}

// splitLeftovers splits keys to remove into service keys and leftover
// keys.
func splitLeftovers(remove []string) (services, leftovers []string) {
	for _, k := range remove {
		if strings.HasPrefix(k, leftoverPrefix) {
			leftovers = append(leftovers, k)
		} else {
			services = append(services, k)
		}
	}
	return services, leftovers
}

// removeLeftovers removes what the keys name that the last Programmed
// reported as leftovers; a key it did not report is gone already.
func (d *Datapath) removeLeftovers(keys []string) error {
	for _, k := range keys {
		if rm, ok := d.leftovers[k]; ok {
			if err := rm(); err != nil {
				return fmt.Errorf("removing %s: %w", k, err)
			}
			delete(d.leftovers, k)
		}
	}
	return nil
}

// servers returns the kernel's virtual servers for a plan: one per
// frontend, and a firewall-mark one for each frontend whose traffic from
// the node goes elsewhere.
func servers(vs []virtual, marks map[vkey]uint32) []virtual {
	out := make([]virtual, 0, len(vs))
	for _, v := range vs {
		out = append(out, virtual{key: v.key, timeout: v.timeout, dests: v.dests})
		if v.fromNode != nil {
			out = append(out, virtual{key: markKey(v.key.addr, marks[v.key]), timeout: v.timeout, dests: v.fromNode.dests})
		}
	}
	return out
}

// assignMarks returns the firewall marks of every frontend of plans that
// needs one: those it had keep theirs, new ones take the lowest free mark.
func assignMarks(have map[vkey]uint32, plans map[string][]virtual) (map[vkey]uint32, error) {
	var need []vkey
	for _, vs := range plans {
		for _, v := range vs {
			if v.fromNode != nil {
				need = append(need, v.key)
			}
		}
	}
	slices.SortFunc(need, compareKeys)
	out := map[vkey]uint32{}
	used := map[uint32]bool{}
	for _, k := range need {
		if m, ok := have[k]; ok {
			out[k] = m
			used[m] = true
		}
	}
	next := uint32(markBase)
	for _, k := range need {
		if _, ok := out[k]; ok {
			continue
		}
		for next++; used[next]; next++ {
		}
		if next > markBase+maxMarks {
			return nil, fmt.Errorf("firewall marks for traffic from the node: more than %d frontends: %w", maxMarks, datapath.ErrFull)
		}
		out[k] = next
		used[next] = true
	}
	return out, nil
}

// release deletes the virtual servers of before that after does not have.
func (d *Datapath) release(before, after []virtual) error {
	keep := map[vkey]bool{}
	for _, v := range after {
		keep[v.key] = true
	}
	for _, v := range before {
		if keep[v.key] {
			continue
		}
		err := d.ipvs.DelService(toService(&v))
		if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting %s: %w", v.key, err)
		}
		delete(d.owners, v.key)
	}
	return nil
}

// holdAddresses moves the dummy device's address references from before's
// addresses to after's, adding and deleting addresses as counts reach and
// leave zero.
func (d *Datapath) holdAddresses(before, after []virtual) error {
	for _, a := range addresses(after, d.node) {
		d.addrRefs[a]++
		if d.addrRefs[a] == 1 {
			err := d.nl.AddrAdd(d.dev, hostAddr(a))
			if err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("adding %s to %s: %w", a, d.opts.Device, err)
			}
		}
	}
	for _, a := range addresses(before, d.node) {
		d.addrRefs[a]--
		if d.addrRefs[a] <= 0 {
			delete(d.addrRefs, a)
			err := d.nl.AddrDel(d.dev, hostAddr(a))
			if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("deleting %s from %s: %w", a, d.opts.Device, err)
			}
		}
	}
	return nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
}

// program makes the kernel's virtual server and its real servers equal v.
func (d *Datapath) program(v *virtual) error {
	svc := toService(v)
	if d.ipvs.IsServicePresent(svc) {
		if err := d.ipvs.UpdateService(svc); err != nil {
			return fmt.Errorf("updating the virtual server: %w", err)
		}
	} else if err := d.ipvs.NewService(svc); err != nil {
		return fmt.Errorf("adding the virtual server: %w", err)
	}
	have, err := d.ipvs.GetDestinations(svc)
	if err != nil {
		return fmt.Errorf("reading real servers: %w", err)
	}
	want := map[netip.AddrPort]int{}
	for _, ds := range v.dests {
		want[ds.addr] = ds.weight
	}
	for _, h := range have {
		a := netip.AddrPortFrom(fromIP(h.Address), h.Port)
		w, ok := want[a]
		switch {
		case !ok:
			if err := d.ipvs.DelDestination(svc, h); err != nil {
				return fmt.Errorf("deleting real server %s: %w", a, err)
			}
		case w != h.Weight || h.ConnectionFlags&0x7 != connFlagMasq:
			if err := d.ipvs.UpdateDestination(svc, toDestination(dest{a, w})); err != nil {
				return fmt.Errorf("updating real server %s: %w", a, err)
			}
		}
		delete(want, a)
	}
	for _, ds := range v.dests {
		if _, missing := want[ds.addr]; missing {
			if err := d.ipvs.NewDestination(svc, toDestination(ds)); err != nil {
				return fmt.Errorf("adding real server %s: %w", ds.addr, err)
			}
		}
	}
	return nil
}

// Programmed implements datapath.Datapath: it reads the virtual servers,
// the dummy device's addresses and the nftables table back from the
// kernel, and reports the services whose entries all match. What the
// kernel holds that no service planned (virtual servers and addresses an
// earlier process left, elements or rules someone else added) is reported
// under keys that start with leftoverPrefix, which Apply removes.
func (d *Datapath) Programmed(ctx context.Context) (map[string]*datapath.Service, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ipvs == nil {
		return nil, errors.New("ipvs datapath is closed")
	}
	kernel, err := d.read()
	if err != nil {
		return nil, err
	}
	addrs, err := d.nl.AddrList(d.dev, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("reading %s's addresses: %w", d.opts.Device, err)
	}
	held := map[netip.Addr]bool{}
	for _, a := range addrs {
		held[fromIP(a.IP)] = true
	}
	rules, err := d.table.read()
	if err != nil {
		return nil, err
	}
	out := map[string]*datapath.Service{}
	planned := map[vkey]bool{}
	for key, vs := range d.plans {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ok := rules.rulesOK
		for _, v := range servers(vs, d.marks) {
			got, found := kernel[v.key]
			ok = ok && found && got.sameServer(&v)
			planned[v.key] = true
		}
		for _, a := range addresses(vs, d.node) {
			ok = ok && held[a]
		}
		own := &ruleset{}
		own.add(vs, d.marks, d.node)
		ok = ok && rules.has(own)
		if ok {
			out[key] = d.services[key]
		} else {
			d.rules = nil // the next Apply replaces the table
		}
	}
	d.findLeftovers(out, kernel, planned, held, rules)
	return out, nil
}

// findLeftovers adds to out, and to d.leftovers with how to remove each,
// the virtual servers and addresses in the kernel that no service planned,
// and the table when it holds what no service needs.
func (d *Datapath) findLeftovers(out map[string]*datapath.Service, kernel map[vkey]*virtual, planned map[vkey]bool,
	held map[netip.Addr]bool, rules *readBack) {
	d.leftovers = map[string]func() error{}
	leftover := func(what string, remove func() error) {
		key := leftoverPrefix + what
		out[key] = &datapath.Service{Key: key}
		d.leftovers[key] = remove
	}
	for k, v := range kernel {
		if !planned[k] {
			leftover("virtual server "+k.String(), func() error { return d.delService(v) })
		}
	}
	for a := range held {
		// The kernel gives the device an IPv6 link-local address of its own.
		if d.addrRefs[a] == 0 && !a.IsLinkLocalUnicast() {
			leftover("address "+a.String()+" on "+d.opts.Device, func() error {
				err := d.nl.AddrDel(d.dev, hostAddr(a))
				if errors.Is(err, unix.EADDRNOTAVAIL) {
					return nil
				}
				return err
			})
		}
	}
	want := buildRuleset(d.plans, d.marks, d.node, d.devices)
	if !rules.rulesOK || len(rules.extra(want)) > 0 {
		d.rules = nil
		leftover("nftables table "+tableName, func() error {
			d.rules = nil
			return d.syncRules(buildRuleset(d.plans, d.marks, d.node, d.devices))
		})
	}
}

// delService deletes a virtual server; one already gone is no error.
func (d *Datapath) delService(v *virtual) error {
	err := d.ipvs.DelService(toService(v))
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting %s: %w", v.key, err)
	}
	return nil
}

// read returns every virtual server in the kernel.
func (d *Datapath) read() (map[vkey]*virtual, error) {
	svcs, err := d.ipvs.GetServices()
	if err != nil {
		return nil, fmt.Errorf("reading virtual servers: %w", err)
	}
	out := make(map[vkey]*virtual, len(svcs))
	for _, s := range svcs {
		var k vkey
		if s.FWMark != 0 {
			zero := netip.IPv4Unspecified()
			if s.AddressFamily == unix.AF_INET6 {
				zero = netip.IPv6Unspecified()
			}
			k = markKey(zero, s.FWMark)
		} else {
			proto, ok := fromProto(s.Protocol)
			if !ok {
				continue
			}
			k = vkey{addr: fromIP(s.Address), proto: proto, port: s.Port}
		}
		v := &virtual{key: k}
		if s.Flags&svcFlagPersistent != 0 {
			v.timeout = s.Timeout
		}
		dests, err := d.ipvs.GetDestinations(s)
		if err != nil {
			return nil, fmt.Errorf("reading real servers of %s: %w", v.key, err)
		}
		for _, ds := range dests {
			if ds.ConnectionFlags&0x7 != connFlagMasq {
				continue
			}
			v.dests = append(v.dests, dest{netip.AddrPortFrom(fromIP(ds.Address), ds.Port), ds.Weight})
		}
		slices.SortFunc(v.dests, func(x, y dest) int { return x.addr.Compare(y.addr) })
		out[v.key] = v
	}
	return out, nil
}

func toService(v *virtual) *ipvs.Service {
	s := &ipvs.Service{
		// Scheduler and netmask as kube-proxy sets them.
		SchedName:     scheduler,
		AddressFamily: family(v.key.addr),
		Netmask:       0xffffffff,
	}
	if v.key.mark != 0 {
		s.FWMark = v.key.mark
	} else {
		s.Address, s.Protocol, s.Port = ipOf(v.key.addr), toProto(v.key.proto), v.key.port
	}
	if v.key.addr.Is6() {
		s.Netmask = 128
	}
	if v.timeout > 0 {
		s.Flags |= svcFlagPersistent
		s.Timeout = v.timeout
	}
	return s
}

func toDestination(ds dest) *ipvs.Destination {
	return &ipvs.Destination{
		Address: ipOf(ds.addr.Addr()), Port: ds.addr.Port(), Weight: ds.weight,
		ConnectionFlags: connFlagMasq, AddressFamily: family(ds.addr.Addr()),
	}
}

// ipOf returns an address as IPVS wants it: 4 bytes for IPv4 (with 16,
// the kernel refuses real servers with "invalid argument").
func ipOf(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }

func fromIP(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func toProto(p datapath.Protocol) uint16 {
	switch p {
	case datapath.UDP:
		return unix.IPPROTO_UDP
	case datapath.SCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

func fromProto(p uint16) (datapath.Protocol, bool) {
	switch p {
	case unix.IPPROTO_TCP:
		return datapath.TCP, true
	case unix.IPPROTO_UDP:
		return datapath.UDP, true
	case unix.IPPROTO_SCTP:
		return datapath.SCTP, true
	}
	return 0, false
}

// Cleanup removes what an IPVS datapath with these options leaves in the
// kernel: every virtual server of the namespace (the datapath owns the
// node's IPVS table, as kube-proxy does), the dummy device and the
// nftables table.
func Cleanup(opts Options) error {
	if opts.Device == "" {
		opts.Device = DefaultDevice
	}
	nl, err := netns.Handle(opts.NetNS, unix.NETLINK_ROUTE, unix.NETLINK_GENERIC)
	if err != nil {
		return err
	}
	defer nl.Close()
	var errs []error
	if _, err := nl.GenlFamilyGet("IPVS"); err == nil {
		h, err := ipvs.New(opts.NetNS)
		if err != nil {
			return err
		}
		errs = append(errs, h.Flush())
		h.Close()
	}
	if dev, err := nl.LinkByName(opts.Device); err == nil {
		errs = append(errs, nl.LinkDel(dev))
	}
	if err := (&table{netns: opts.NetNS}).remove(); err != nil && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("removing nftables table %s: %w", tableName, err))
	}
	return errors.Join(errs...)
}
