package memory

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sync"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
)

var (
	_ datapath.Datapath = (*Datapath)(nil)
	_ datapath.Stamper  = (*Datapath)(nil)
)

// Options configure a memory datapath.
type Options struct {
	// MaxServices bounds the number of services; 0 means no bound.
	MaxServices int
	// Now is the clock for session affinity; time.Now when nil.
	Now func() time.Time
}

// Datapath is the in-memory implementation of datapath.Datapath.
type Datapath struct {
	opts Options

	mu       sync.RWMutex
	node     datapath.Node
	services map[string]*datapath.Service
	index    map[frontend]target // nil when stale
	affinity map[affinityKey]affinityEntry
	stamp    []byte
}

// New returns an empty in-memory datapath.
func New(opts Options) *Datapath {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Datapath{
		opts:     opts,
		services: make(map[string]*datapath.Service),
		affinity: make(map[affinityKey]affinityEntry),
	}
}

// Name implements datapath.Datapath.
func (d *Datapath) Name() string { return "memory" }

// SetNode implements datapath.Datapath.
func (d *Datapath) SetNode(_ context.Context, node datapath.Node) error {
	for _, a := range node.Addresses {
		if !a.IsValid() {
			return fmt.Errorf("%w: node %s: bad address %q", datapath.ErrInvalid, node.Name, a)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.node = node
	d.index = nil
	return nil
}

// Apply implements datapath.Datapath.
func (d *Datapath) Apply(_ context.Context, upsert []*datapath.Service, remove []string) error {
	for _, s := range upsert {
		if err := s.Validate(); err != nil {
			return err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.opts.MaxServices > 0 {
		n := len(d.services)
		for _, key := range remove {
			if _, ok := d.services[key]; ok {
				n--
			}
		}
		for _, s := range upsert {
			if _, ok := d.services[s.Key]; !ok {
				n++
			}
		}
		if n > d.opts.MaxServices {
			return fmt.Errorf("services table: %d services exceed %d: %w", n, d.opts.MaxServices, datapath.ErrFull)
		}
	}
	for _, key := range remove {
		delete(d.services, key)
	}
	for _, s := range upsert {
		d.services[s.Key] = s
	}
	d.index = nil
	return nil
}

// Programmed implements datapath.Datapath.
func (d *Datapath) Programmed(context.Context) (map[string]*datapath.Service, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make(map[string]*datapath.Service, len(d.services))
	for k, s := range d.services {
		out[k] = s
	}
	return out, nil
}

// Stamp implements datapath.Stamper.
func (d *Datapath) Stamp(_ context.Context, stamp []byte) error {
	if err := datapath.CheckStamp(stamp); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stamp = bytes.Clone(stamp)
	return nil
}

// Stamped implements datapath.Stamper.
func (d *Datapath) Stamped(context.Context) ([]byte, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if len(d.stamp) == 0 {
		return nil, nil
	}
	return bytes.Clone(d.stamp), nil
}

// Len returns the number of programmed services.
func (d *Datapath) Len() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return len(d.services)
}

// frontend is an address a service answers on. A zero addr matches every
// address of the node (NodePorts).
type frontend struct {
	addr  netip.Addr
	port  uint16
	proto datapath.Protocol
}

type target struct {
	svc  *datapath.Service
	port *datapath.Port
	// backends serve traffic from outside the node, fromNode traffic that
	// starts on it; they differ for external frontends only.
	backends, fromNode *datapath.Backends
	// lb marks load-balancer addresses, subject to source ranges.
	lb bool
}

type affinityKey struct {
	service string
	port    uint16
	proto   datapath.Protocol
	client  netip.Addr
}

type affinityEntry struct {
	backend netip.AddrPort
	expires time.Time
}

func (d *Datapath) buildIndex() {
	index := make(map[frontend]target)
	for _, s := range d.services {
		for i := range s.Ports {
			p := &s.Ports[i]
			for _, a := range s.ClusterIPs {
				index[frontend{a, p.Port, p.Protocol}] = target{svc: s, port: p, backends: &p.Internal, fromNode: &p.Internal}
			}
			ext := target{svc: s, port: p, backends: p.ExternalBackends(), fromNode: p.ExternalFromNodeBackends()}
			for _, a := range s.ExternalIPs {
				index[frontend{a, p.Port, p.Protocol}] = ext
			}
			lb := ext
			lb.lb = true
			for _, a := range s.LoadBalancerIPs {
				index[frontend{a, p.Port, p.Protocol}] = lb
			}
			if p.NodePort != 0 {
				index[frontend{netip.Addr{}, p.NodePort, p.Protocol}] = ext
			}
		}
	}
	d.index = index
}

// Trace returns what the datapath does with the first packet of a
// connection that starts where origin says. It records session affinity
// as a real connection would.
func (d *Datapath) Trace(origin datapath.Origin, pkt datapath.Packet) datapath.Verdict {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.index == nil {
		d.buildIndex()
	}
	dst := pkt.Dst.Addr()
	t, ok := d.index[frontend{dst, pkt.Dst.Port(), pkt.Protocol}]
	if !ok && d.isNodeAddress(dst) {
		t, ok = d.index[frontend{netip.Addr{}, pkt.Dst.Port(), pkt.Protocol}]
	}
	if !ok {
		return datapath.Verdict{Action: datapath.Pass}
	}
	v := datapath.Verdict{Service: t.svc.Key}
	if t.lb && !sourceAllowed(t.svc.SourceRanges, pkt.Src.Addr()) {
		v.Action = datapath.Discard
		return v
	}
	backends := t.backends
	if origin == datapath.FromNode {
		backends = t.fromNode
	}
	var candidates []netip.AddrPort
	for _, ep := range backends.Endpoints {
		if !ep.Draining && ep.Addr.Addr().Is4() == dst.Is4() {
			candidates = append(candidates, ep.Addr)
		}
	}
	if len(candidates) == 0 {
		v.Action = datapath.Refuse
		if backends.NoEndpoints == datapath.Drop {
			v.Action = datapath.Discard
		}
		return v
	}
	v.Action = datapath.Forward
	v.Backend = d.pick(t, pkt, candidates)
	return v
}

func (d *Datapath) pick(t target, pkt datapath.Packet, candidates []netip.AddrPort) netip.AddrPort {
	now := d.opts.Now()
	key := affinityKey{t.svc.Key, t.port.Port, t.port.Protocol, pkt.Src.Addr()}
	if t.svc.AffinityTimeout > 0 {
		if e, ok := d.affinity[key]; ok && now.Before(e.expires) {
			for _, c := range candidates {
				if c == e.backend {
					d.affinity[key] = affinityEntry{c, now.Add(t.svc.AffinityTimeout)}
					return c
				}
			}
		}
	}
	h := fnv.New64a()
	b, _ := pkt.Src.MarshalBinary()
	h.Write(b)
	b, _ = pkt.Dst.MarshalBinary()
	h.Write(b)
	chosen := candidates[h.Sum64()%uint64(len(candidates))]
	if t.svc.AffinityTimeout > 0 {
		d.affinity[key] = affinityEntry{chosen, now.Add(t.svc.AffinityTimeout)}
	}
	return chosen
}

func (d *Datapath) isNodeAddress(a netip.Addr) bool {
	for _, n := range d.node.Addresses {
		if n == a {
			return true
		}
	}
	return false
}

func sourceAllowed(ranges []netip.Prefix, src netip.Addr) bool {
	if len(ranges) == 0 {
		return true
	}
	for _, r := range ranges {
		if r.Contains(src) {
			return true
		}
	}
	return false
}
