package datapath

import (
	"fmt"
	"net/netip"
)

// Validate checks that a service is well formed: a key, valid addresses,
// known protocols, non-zero ports, no duplicate frontends. Implementations
// call it before they program anything; errors wrap ErrInvalid.
func (s *Service) Validate() error {
	if s.Key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalid)
	}
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", ErrInvalid, s.Key, fmt.Sprintf(format, args...))
	}
	for _, set := range [][]netip.Addr{s.ClusterIPs, s.ExternalIPs, s.LoadBalancerIPs} {
		for _, a := range set {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
				return invalid("bad address %q", a)
			}
		}
	}
	for _, p := range s.SourceRanges {
		if !p.IsValid() || p != p.Masked() {
			return invalid("bad source range %q", p)
		}
	}
	if s.AffinityTimeout < 0 {
		return invalid("negative affinity timeout")
	}
	type frontend struct {
		proto Protocol
		port  uint16
		node  bool
	}
	seen := make(map[frontend]bool, len(s.Ports))
	for i := range s.Ports {
		p := &s.Ports[i]
		if p.Protocol < TCP || p.Protocol > SCTP {
			return invalid("port %q: unknown protocol %d", p.Name, p.Protocol)
		}
		if p.Port == 0 {
			return invalid("port %q: port 0", p.Name)
		}
		for _, f := range []frontend{{p.Protocol, p.Port, false}, {p.Protocol, p.NodePort, true}} {
			if f.port == 0 {
				continue
			}
			if seen[f] {
				return invalid("port %q: duplicate %s port %d", p.Name, f.proto, f.port)
			}
			seen[f] = true
		}
		for _, b := range []*Backends{&p.Internal, p.External, p.ExternalFromNode} {
			if b == nil {
				continue
			}
			if b.NoEndpoints != Reject && b.NoEndpoints != Drop {
				return invalid("port %q: unknown no-endpoints action %d", p.Name, b.NoEndpoints)
			}
			for _, ep := range b.Endpoints {
				if !ep.Addr.IsValid() || ep.Addr.Port() == 0 || ep.Addr.Addr().Zone() != "" || ep.Addr.Addr().Is4In6() {
					return invalid("port %q: bad endpoint %q", p.Name, ep.Addr)
				}
			}
		}
	}
	return nil
}
