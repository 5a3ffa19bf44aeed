// Package view turns resources received from the control plane into the
// datapath's types. Everything it reads crossed a process boundary and may
// be hostile: it parses addresses canonically, bounds sizes, and returns an
// error naming the field instead of passing anything doubtful on.
package view

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spoke-proxy/spoke/datapath"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Limits on what one service may hold. They are far above what Kubernetes
// allows and exist to bound memory and datapath work per resource.
const (
	MaxAddresses = 64
	MaxPorts     = 256
	MaxEndpoints = 10000
	maxNameLen   = 253*2 + 1
)

// ErrInvalid marks a resource that fails validation.
var ErrInvalid = errors.New("invalid resource")

// Decoder decodes the service resources an agent receives from the control
// plane, after checking that each one's version is the hash of its
// content. The zero value is ready to use.
type Decoder struct{}

// Service checks r's version and decodes it.
func (Decoder) Service(r *spokev1.Resource) (*datapath.Service, error) {
	if err := CheckVersion(r); err != nil {
		return nil, err
	}
	return Service(r)
}

// CheckVersion reports whether a resource's version is the hash of its
// content.
func CheckVersion(r *spokev1.Resource) error {
	if v, err := spokev1.ContentVersion(r); err != nil || v != r.GetVersion() {
		return fmt.Errorf("version %q does not match content", r.GetVersion())
	}
	return nil
}

// Service decodes and validates one service resource.
func Service(r *spokev1.Resource) (*datapath.Service, error) {
	s := r.GetService()
	if s == nil {
		return nil, fmt.Errorf("%w %q: not a service", ErrInvalid, r.GetName())
	}
	key := s.GetNamespace() + "/" + s.GetName()
	if r.GetName() != key {
		return nil, fmt.Errorf("%w %q: name does not match service %q", ErrInvalid, r.GetName(), key)
	}
	if s.GetNamespace() == "" || s.GetName() == "" || len(key) > maxNameLen || strings.Count(key, "/") != 1 {
		return nil, fmt.Errorf("%w %q: bad service name", ErrInvalid, key)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", ErrInvalid, key, fmt.Sprintf(format, args...))
	}
	out := &datapath.Service{Key: key}
	var err error
	if out.ClusterIPs, err = addrs(s.GetClusterIps()); err != nil {
		return nil, fail("cluster_ips: %v", err)
	}
	if out.ExternalIPs, err = addrs(s.GetExternalIps()); err != nil {
		return nil, fail("external_ips: %v", err)
	}
	if out.LoadBalancerIPs, err = addrs(s.GetLoadBalancerIps()); err != nil {
		return nil, fail("load_balancer_ips: %v", err)
	}
	if len(s.GetLoadBalancerSourceRanges()) > MaxAddresses {
		return nil, fail("load_balancer_source_ranges: more than %d", MaxAddresses)
	}
	for _, c := range s.GetLoadBalancerSourceRanges() {
		p, err := netip.ParsePrefix(c)
		if err != nil || p != p.Masked() {
			return nil, fail("load_balancer_source_ranges: %q is not a canonical CIDR", c)
		}
		out.SourceRanges = append(out.SourceRanges, p)
	}
	if t := s.GetSessionAffinityTimeoutSeconds(); t > 86400 {
		return nil, fail("session affinity timeout %d s exceeds a day", t)
	} else {
		out.AffinityTimeout = time.Duration(t) * time.Second
	}
	if out.HealthCheckNodePort, err = port(s.GetHealthCheckNodePort(), true); err != nil {
		return nil, fail("health_check_node_port: %v", err)
	}
	if len(s.GetPorts()) > MaxPorts {
		return nil, fail("more than %d ports", MaxPorts)
	}
	out.Ports = make([]datapath.Port, 0, len(s.GetPorts()))
	for _, p := range s.GetPorts() {
		dp, err := servicePort(p)
		if err != nil {
			return nil, fail("port %q: %v", p.GetName(), err)
		}
		out.Ports = append(out.Ports, dp)
	}
	if err := out.Validate(); err != nil {
		return nil, err
	}
	return out, nil
}

// Node decodes and validates the node resource.
func Node(r *spokev1.Resource) (datapath.Node, error) {
	n := r.GetNode()
	if n == nil || r.GetName() != spokev1.NodeResourceName {
		return datapath.Node{}, fmt.Errorf("%w %q: not the node resource", ErrInvalid, r.GetName())
	}
	as, err := addrs(n.GetAddresses())
	if err != nil {
		return datapath.Node{}, fmt.Errorf("%w: node %s addresses: %w", ErrInvalid, n.GetName(), err)
	}
	return datapath.Node{Name: n.GetName(), Zone: n.GetZone(), Addresses: as}, nil
}

// Protocol returns the datapath's protocol for p, and false for one the
// datapath does not know.
func Protocol(p spokev1.Protocol) (datapath.Protocol, bool) {
	switch p {
	case spokev1.Protocol_PROTOCOL_TCP:
		return datapath.TCP, true
	case spokev1.Protocol_PROTOCOL_UDP:
		return datapath.UDP, true
	case spokev1.Protocol_PROTOCOL_SCTP:
		return datapath.SCTP, true
	}
	return 0, false
}

func servicePort(p *spokev1.ServicePort) (datapath.Port, error) {
	out := datapath.Port{Name: p.GetName()}
	var ok bool
	if out.Protocol, ok = Protocol(p.GetProtocol()); !ok {
		return out, fmt.Errorf("unknown protocol %v", p.GetProtocol())
	}
	var err error
	if out.Port, err = port(p.GetPort(), false); err != nil {
		return out, err
	}
	if out.NodePort, err = port(p.GetNodePort(), true); err != nil {
		return out, fmt.Errorf("node port: %w", err)
	}
	if p.GetInternal() == nil {
		return out, errors.New("no internal backends")
	}
	if out.Internal, err = backends(p.GetInternal()); err != nil {
		return out, fmt.Errorf("internal: %w", err)
	}
	if p.GetExternal() != nil {
		ext, err := backends(p.GetExternal())
		if err != nil {
			return out, fmt.Errorf("external: %w", err)
		}
		out.External = &ext
	}
	if p.GetExternalFromNode() != nil {
		ext, err := backends(p.GetExternalFromNode())
		if err != nil {
			return out, fmt.Errorf("external_from_node: %w", err)
		}
		out.ExternalFromNode = &ext
	}
	return out, nil
}

func backends(b *spokev1.Backends) (datapath.Backends, error) {
	var out datapath.Backends
	switch b.GetNoEndpoints() {
	case spokev1.NoEndpoints_NO_ENDPOINTS_REJECT:
		out.NoEndpoints = datapath.Reject
	case spokev1.NoEndpoints_NO_ENDPOINTS_DROP:
		out.NoEndpoints = datapath.Drop
	default:
		return out, fmt.Errorf("unknown no_endpoints %v", b.GetNoEndpoints())
	}
	if len(b.GetEndpoints()) > MaxEndpoints {
		return out, fmt.Errorf("more than %d endpoints", MaxEndpoints)
	}
	out.Endpoints = make([]datapath.Endpoint, 0, len(b.GetEndpoints()))
	for _, ep := range b.GetEndpoints() {
		a, err := addr(ep.GetIp())
		if err != nil {
			return out, fmt.Errorf("endpoint: %w", err)
		}
		p, err := port(ep.GetPort(), false)
		if err != nil {
			return out, fmt.Errorf("endpoint %s: %w", a, err)
		}
		out.Endpoints = append(out.Endpoints, datapath.Endpoint{Addr: netip.AddrPortFrom(a, p), Draining: ep.GetDraining()})
	}
	return out, nil
}

func port(p uint32, zeroOK bool) (uint16, error) {
	if p > 65535 || (p == 0 && !zeroOK) {
		return 0, fmt.Errorf("port %d out of range", p)
	}
	return uint16(p), nil
}

func addrs(in []string) ([]netip.Addr, error) {
	if len(in) > MaxAddresses {
		return nil, fmt.Errorf("more than %d addresses", MaxAddresses)
	}
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]netip.Addr, 0, len(in))
	for _, s := range in {
		a, err := addr(s)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// addr parses an address in its canonical text form only: no zones, no
// IPv4-mapped IPv6, nothing that prints differently from how it reads.
func addr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("bad address %q", s)
	}
	var canonical [64]byte // the longest IPv6 text without a zone is 45 bytes
	if a.Zone() != "" || a.Is4In6() || string(a.AppendTo(canonical[:0])) != s || a.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("address %q is not canonical", s)
	}
	return a, nil
}
