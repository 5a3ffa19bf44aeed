package datapath

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"time"
)

// Datapath programs a node's services into a forwarding plane. A Datapath is
// driven by the node agent's reconciler and must be safe for use by one
// caller at a time; Trace, where implemented, may run concurrently.
type Datapath interface {
	// Name identifies the implementation ("memory", "ebpf", "ipvs").
	Name() string
	// SetNode sets the node's own addresses, on which NodePorts are served.
	SetNode(ctx context.Context, node Node) error
	// Apply programs the upserted services (replacing any service of the same
	// key) and removes the named ones. Apply checks what it can (capacity,
	// address families) before it changes anything: an error that wraps
	// ErrInvalid or ErrFull leaves the datapath as it was.
	Apply(ctx context.Context, upsert []*Service, remove []string) error
	// Programmed reads back what is actually programmed, by service key.
	// What a datapath finds programmed that belongs to no service it
	// programmed (an earlier process's leftovers, or another program's
	// entries in tables the datapath owns) it may report under keys of
	// its own that no service key ("namespace/name") looks like; Apply
	// removes what such a key names, so that the reconciler's drift check
	// removes leftovers as it removes services nobody wants.
	Programmed(ctx context.Context) (map[string]*Service, error)
}

// Stamper is a datapath whose programmed state outlives its caller (the
// eBPF datapath's pinned maps) and keeps, beside it, a stamp its caller
// sets. The agent stamps the datapath, with a stamp its state file records
// too, once the datapath holds exactly what that file records; a restarted
// agent that finds both stamps equal knows the datapath already holds the
// file's services, and is ready without programming or reading them back
// first (it verifies them in the background). The stamp says nothing about
// writes by anyone else: that is what the verification is for.
type Stamper interface {
	// Stamp replaces the stamp; at most MaxStamp bytes.
	Stamp(ctx context.Context, stamp []byte) error
	// Stamped returns the stamp, nil when none was set.
	Stamped(ctx context.Context) ([]byte, error)
}

// MaxStamp is the longest stamp a Stamper keeps.
const MaxStamp = 32

// CheckStamp returns an error that wraps ErrInvalid for a stamp longer
// than MaxStamp.
func CheckStamp(stamp []byte) error {
	if len(stamp) > MaxStamp {
		return fmt.Errorf("%w: stamp of %d bytes, at most %d", ErrInvalid, len(stamp), MaxStamp)
	}
	return nil
}

// Stamp stamps dp, or fails with errors.ErrUnsupported if dp keeps no
// stamp.
func Stamp(ctx context.Context, dp Datapath, stamp []byte) error {
	s, ok := dp.(Stamper)
	if !ok {
		return errors.ErrUnsupported
	}
	return s.Stamp(ctx, stamp)
}

// Stamped returns dp's stamp, or fails with errors.ErrUnsupported if dp
// keeps none.
func Stamped(ctx context.Context, dp Datapath) ([]byte, error) {
	s, ok := dp.(Stamper)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return s.Stamped(ctx)
}

// Sentinel errors callers branch on.
var (
	// ErrInvalid marks a service the datapath cannot express.
	ErrInvalid = errors.New("invalid service")
	// ErrFull marks a datapath table with no room left.
	ErrFull = errors.New("table full")
)

// Protocol is an L4 protocol.
type Protocol uint8

// Protocols a service port may use.
const (
	TCP Protocol = iota + 1
	UDP
	SCTP
)

func (p Protocol) String() string {
	return Name(p, "Protocol", protocolNames[:])
}

var protocolNames = [...]string{TCP: "TCP", UDP: "UDP", SCTP: "SCTP"}

// Name returns names[v], or "KIND(v)" for a value without a name: the
// String method of a small enumeration.
func Name[T ~uint8](v T, kind string, names []string) string {
	if int(v) < len(names) && names[v] != "" {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", kind, uint8(v))
}

// NoEndpoints is what happens to a new connection no endpoint can take.
type NoEndpoints uint8

// Outcomes for a connection without a usable endpoint.
const (
	// Reject refuses the connection: the service has no endpoint anywhere.
	Reject NoEndpoints = iota + 1
	// Drop discards it silently: a Local traffic policy and no endpoint on
	// this node.
	Drop
)

// Node is the node the datapath runs on.
type Node struct {
	Name      string
	Zone      string
	Addresses []netip.Addr
}

// Service is one service as this node programs it: every policy is already
// resolved by the control plane.
type Service struct {
	// Key is "namespace/name".
	Key             string
	ClusterIPs      []netip.Addr
	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr
	// SourceRanges restrict who may reach LoadBalancerIPs; empty allows all.
	SourceRanges []netip.Prefix
	// AffinityTimeout is the ClientIP session affinity timeout; 0 disables it.
	AffinityTimeout     time.Duration
	HealthCheckNodePort uint16
	Ports               []Port
}

// Port is one service port with the endpoints serving it.
type Port struct {
	Name     string
	Protocol Protocol
	Port     uint16
	NodePort uint16
	// Internal serves traffic to cluster IPs.
	Internal Backends
	// External serves NodePort, external IP and load-balancer traffic that
	// arrives from outside the node; nil means the same as Internal.
	External *Backends
	// ExternalFromNode serves NodePort, external IP and load-balancer
	// traffic that starts on this node (its pods or the host): the
	// cluster-wide endpoints whatever the external traffic policy
	// (kube-proxy's short-circuit). nil means the same as Internal.
	ExternalFromNode *Backends
}

// ExternalBackends returns the backends for traffic from outside the node to
// the node port, external IPs and load-balancer IPs.
func (p *Port) ExternalBackends() *Backends {
	if p.External != nil {
		return p.External
	}
	return &p.Internal
}

// ExternalFromNodeBackends returns the backends for traffic from this node
// to the node port, external IPs and load-balancer IPs.
func (p *Port) ExternalFromNodeBackends() *Backends {
	if p.ExternalFromNode != nil {
		return p.ExternalFromNode
	}
	return &p.Internal
}

// Backends are the endpoints a kind of traffic may reach.
type Backends struct {
	Endpoints   []Endpoint
	NoEndpoints NoEndpoints
}

// Active returns the endpoints that take new connections.
func (b *Backends) Active() []Endpoint {
	active := make([]Endpoint, 0, len(b.Endpoints))
	for _, ep := range b.Endpoints {
		if !ep.Draining {
			active = append(active, ep)
		}
	}
	return active
}

// Endpoint is one backend.
type Endpoint struct {
	Addr netip.AddrPort
	// Draining endpoints keep their connections but take no new ones.
	Draining bool
}

// Equal reports whether two services program the same thing. Datapaths that
// read services back from the kernel return them in a canonical order, so
// the comparison is exact.
func Equal(a, b *Service) bool {
	return reflect.DeepEqual(a, b)
}
