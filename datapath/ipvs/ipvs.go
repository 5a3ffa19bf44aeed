package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
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
// IPVS virtual servers of the services it programs and the addresses of
// its dummy device.
type Datapath struct {
	opts Options

	mu       sync.Mutex
	ipvs     *ipvs.Handle
	nl       *netlink.Handle
	dev      netlink.Link
	node     []netip.Addr
	services map[string]*datapath.Service
	plans    map[string][]virtual
	owners   map[vkey]string
	addrRefs map[netip.Addr]int
	masq     *masq
}

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
		opts: opts, ipvs: h, nl: nl,
		services: map[string]*datapath.Service{}, plans: map[string][]virtual{},
		owners: map[vkey]string{}, addrRefs: map[netip.Addr]int{},
	}
	if err := d.setup(); err != nil {
		d.Close()
		return nil, err
	}
	d.masq = newMasq(opts.NetNS, opts.Devices)
	if err := d.masq.setup(nil); err != nil {
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
		if !slices.Equal(devs, d.masq.devices) {
			d.masq.devices = devs
			if err := d.masq.setup(nil); err != nil {
				return err
			}
		}
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
	// Refuse, changing nothing, two services on one virtual server.
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
				return fmt.Errorf("%w %s: %s is also programmed by %s", datapath.ErrInvalid, s.Key, v.key, other)
			}
			claimed[v.key] = s.Key
			if owner, ok := d.owners[v.key]; ok && owner != s.Key && !changing[owner] {
				return fmt.Errorf("%w %s: %s is already programmed by %s", datapath.ErrInvalid, s.Key, v.key, owner)
			}
		}
	}
	upserted := map[string]bool{}
	for _, s := range upsert {
		upserted[s.Key] = true
	}
	// Removals first, so that a virtual server moving between services is
	// free when its new owner takes it.
	for _, k := range remove {
		if upserted[k] {
			continue
		}
		if err := d.release(d.plans[k], nil); err != nil {
			return fmt.Errorf("removing %s: %w", k, err)
		}
		delete(d.services, k)
		delete(d.plans, k)
	}
	for _, s := range upsert {
		if err := d.release(d.plans[s.Key], plans[s.Key]); err != nil {
			return fmt.Errorf("programming %s: %w", s.Key, err)
		}
	}
	for _, s := range upsert {
		if err := ctx.Err(); err != nil {
			return err
		}
		for i := range plans[s.Key] {
			v := &plans[s.Key][i]
			if err := d.program(v); err != nil {
				return fmt.Errorf("programming %s: %s: %w", s.Key, v.key, err)
			}
			d.owners[v.key] = s.Key
		}
		if err := d.holdAddresses(d.plans[s.Key], plans[s.Key]); err != nil {
			return fmt.Errorf("programming %s: %w", s.Key, err)
		}
		d.services[s.Key] = s
		d.plans[s.Key] = plans[s.Key]
	}
	return d.masq.update(d.vips())
}

// vips are the addresses whose traffic from outside may be masqueraded:
// the service addresses and the node's.
func (d *Datapath) vips() []netip.Addr {
	out := slices.Clone(d.node)
	for a := range d.addrRefs {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// release deletes the virtual servers of before that after does not have,
// and the addresses only they needed.
func (d *Datapath) release(before, after []virtual) error {
	keep := map[vkey]bool{}
	for _, v := range after {
		keep[v.key] = true
	}
	var gone []virtual
	for _, v := range before {
		if keep[v.key] {
			continue
		}
		err := d.ipvs.DelService(toService(&v))
		if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("deleting %s: %w", v.key, err)
		}
		delete(d.owners, v.key)
		gone = append(gone, v)
	}
	if after != nil {
		return nil // holdAddresses moves the addresses of a replaced plan
	}
	return d.holdAddresses(gone, nil)
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

// Programmed implements datapath.Datapath: it reads every virtual server
// of the services Apply programmed back from the kernel, with the dummy
// device's addresses, and reports the services whose entries all match.
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
	out := map[string]*datapath.Service{}
	for key, vs := range d.plans {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ok := true
		for i := range vs {
			got, found := kernel[vs[i].key]
			ok = ok && found && got.equal(&vs[i])
		}
		for _, a := range addresses(vs, d.node) {
			ok = ok && held[a]
		}
		if ok {
			out[key] = d.services[key]
		}
	}
	return out, nil
}

// read returns every virtual server in the kernel.
func (d *Datapath) read() (map[vkey]*virtual, error) {
	svcs, err := d.ipvs.GetServices()
	if err != nil {
		return nil, fmt.Errorf("reading virtual servers: %w", err)
	}
	out := make(map[vkey]*virtual, len(svcs))
	for _, s := range svcs {
		proto, ok := fromProto(s.Protocol)
		if !ok || s.FWMark != 0 {
			continue
		}
		v := &virtual{key: vkey{fromIP(s.Address), proto, s.Port}}
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
		Address:  ipOf(v.key.addr),
		Protocol: toProto(v.key.proto),
		Port:     v.key.port,
		// Scheduler and netmask as kube-proxy sets them.
		SchedName:     scheduler,
		AddressFamily: family(v.key.addr),
		Netmask:       0xffffffff,
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
	if err := newMasq(opts.NetNS, nil).remove(); err != nil && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("removing nftables table %s: %w", tableName, err))
	}
	return errors.Join(errs...)
}
