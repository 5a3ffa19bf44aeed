package watch

import (
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/spoke-proxy/spoke/controlplane/model"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// frontend is an address, port and protocol that a service serves beside
// its cluster IPs: an external IP or a load-balancer IP. The API server
// keeps cluster IPs and node ports unique; it does not check these.
type frontend struct {
	addr  string
	port  uint32
	proto spokev1.Protocol
}

// claim is a service's claim on a frontend; the oldest claim wins.
type claim struct {
	created time.Time
	key     string
}

func (c claim) before(o claim) bool {
	if !c.created.Equal(o.created) {
		return c.created.Before(o.created)
	}
	return c.key < o.key
}

// frontends settles services that claim one frontend: the oldest service
// (by creation time, then namespace/name) keeps it and the others leave
// the address out of their views, so that every node programs the same
// winner whatever order the services reached it in. kube-proxy leaves the
// choice to rule order; Spoke makes it explicit and stable.
//
// A frontends is used by one goroutine at a time.
type frontends struct {
	claims map[frontend]map[string]claim // frontend → service → its claim
	bySvc  map[string][]frontend
}

func newFrontends() *frontends {
	return &frontends{claims: map[frontend]map[string]claim{}, bySvc: map[string][]frontend{}}
}

// frontendsOf returns the frontends a service's view claims.
func frontendsOf(s *spokev1.Service) []frontend {
	var out []frontend
	for _, addrs := range [][]string{s.GetExternalIps(), s.GetLoadBalancerIps()} {
		for _, a := range addrs {
			for _, p := range s.GetPorts() {
				out = append(out, frontend{addr: a, port: p.GetPort(), proto: p.GetProtocol()})
			}
		}
	}
	return out
}

// set records the frontends a service claims now (none once it is gone)
// and returns the other services that claimed one of them, before or now:
// which of them wins may have changed.
func (f *frontends) set(key string, created time.Time, claims []frontend) []string {
	if len(claims) == 0 && len(f.bySvc[key]) == 0 {
		return nil // most services: neither external nor load-balancer IPs
	}
	others := map[string]bool{}
	for _, fe := range f.bySvc[key] {
		c := f.claims[fe]
		delete(c, key)
		for o := range c {
			others[o] = true
		}
		if len(c) == 0 {
			delete(f.claims, fe)
		}
	}
	delete(f.bySvc, key)
	if len(claims) > 0 {
		f.bySvc[key] = claims
	}
	for _, fe := range claims {
		c := f.claims[fe]
		if c == nil {
			c = map[string]claim{}
			f.claims[fe] = c
		}
		c[key] = claim{created: created, key: key}
		for o := range c {
			if o != key {
				others[o] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(others))
}

// losing returns the addresses a service must leave out, each with the
// service that keeps it: those of which some frontend is claimed by an
// older service.
func (f *frontends) losing(key string) map[string]string {
	var out map[string]string
	var best map[string]claim
	for _, fe := range f.bySvc[key] {
		mine := f.claims[fe][key]
		for o, c := range f.claims[fe] {
			if o == key || !c.before(mine) {
				continue
			}
			if b, ok := best[fe.addr]; ok && !c.before(b) {
				continue
			}
			if out == nil {
				out, best = map[string]string{}, map[string]claim{}
			}
			best[fe.addr] = c
			out[fe.addr] = o
		}
	}
	return out
}

// withoutAddresses returns views whose external and load-balancer IPs
// leave out the addresses lost.
func withoutAddresses(v model.Views, lost map[string]string) model.Views {
	strip := func(s *spokev1.Service) *spokev1.Service {
		if s == nil {
			return nil
		}
		c := proto.Clone(s).(*spokev1.Service)
		gone := func(a string) bool { _, ok := lost[a]; return ok }
		c.ExternalIps = slices.DeleteFunc(c.ExternalIps, gone)
		c.LoadBalancerIps = slices.DeleteFunc(c.LoadBalancerIps, gone)
		return c
	}
	out := v
	out.Default = strip(v.Default)
	out.ByZone, out.ByNode = nil, nil
	for z, s := range v.ByZone {
		if out.ByZone == nil {
			out.ByZone = make(map[string]*spokev1.Service, len(v.ByZone))
		}
		out.ByZone[z] = strip(s)
	}
	for n, s := range v.ByNode {
		if out.ByNode == nil {
			out.ByNode = make(map[string]*spokev1.Service, len(v.ByNode))
		}
		out.ByNode[n] = strip(s)
	}
	return out
}
