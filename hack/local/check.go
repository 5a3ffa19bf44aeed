package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// check is one connection the demo must (or must not) make.
type check struct {
	from string // "node-N" (its client pod) or "outside"
	svc  *demoService
	dst  netip.AddrPort
	// dropped: the connection must go unanswered (a Local policy on a
	// node without a local endpoint).
	dropped bool
	// clientSource: the backend must see the client's own address.
	clientSource bool
}

func (c check) String() string {
	return fmt.Sprintf("%-8s -> %-19s %-21s %s", c.from, c.svc.name+"/"+c.svc.proto, c.dst, c.svc.kind)
}

// checks lists, for every node's client pod, every service by its cluster
// IP, its node port on that node and its load-balancer IP; and from
// outside, every node port on every node and every load-balancer IP.
func checks(nodes []*node, services []*demoService) []check {
	var out []check
	for _, n := range nodes {
		for _, s := range services {
			out = append(out, check{from: n.name, svc: s, dst: netip.AddrPortFrom(s.clusterIP, s.port)})
			if s.nodePort != 0 {
				out = append(out, check{from: n.name, svc: s, dst: netip.AddrPortFrom(nodeAddr(n.index), s.nodePort)})
			}
			if s.lbIP.IsValid() {
				out = append(out, check{from: n.name, svc: s, dst: netip.AddrPortFrom(s.lbIP, s.port)})
			}
		}
	}
	for _, s := range services {
		if s.nodePort != 0 {
			for _, n := range nodes {
				c := check{from: "outside", svc: s, dst: netip.AddrPortFrom(nodeAddr(n.index), s.nodePort)}
				if s.local {
					hasLocal := slices.ContainsFunc(s.backends, func(p *pod) bool { return p.node == n })
					c.dropped, c.clientSource = !hasLocal, hasLocal
				}
				out = append(out, c)
			}
		}
		if s.lbIP.IsValid() {
			out = append(out, check{from: "outside", svc: s, dst: netip.AddrPortFrom(s.lbIP, s.port)})
		}
	}
	return out
}

// runChecks makes every connection, prints one line each to w and returns
// how many failed.
func runChecks(ctx context.Context, w io.Writer, cs []check, clients map[string]*pod) (failed int) {
	seen := map[string]map[string]bool{} // service -> backends that answered
	for _, c := range cs {
		timeout := 2 * time.Second
		if c.dropped {
			timeout = time.Second
		}
		var a answer
		if c.from == "outside" {
			a = probe(c.svc.proto, c.dst, timeout)
		} else {
			a = probeFrom(ctx, clients[c.from], c.svc.proto, c.dst, timeout)
		}
		err := verify(c, a)
		verdict := "ok  "
		if err != nil {
			verdict = "FAIL"
			failed++
		}
		detail := a.Responder
		switch {
		case err != nil:
			detail = err.Error()
		case c.dropped:
			detail = "dropped, as it must be"
		}
		fmt.Fprintf(w, "%s %s  %s\n", verdict, c, detail)
		if a.Responder != "" {
			if seen[c.svc.name] == nil {
				seen[c.svc.name] = map[string]bool{}
			}
			seen[c.svc.name][a.Responder] = true
		}
	}
	// Each service with several backends must spread new connections over
	// them: 20 connections from the first node's client pod to its cluster
	// IP all reaching one of two backends would happen once in 500,000 runs.
	const spread = 20
	for _, svc := range services(cs) {
		if len(svc.backends) < 2 || len(clients) == 0 {
			continue
		}
		from := clients[cs[0].from]
		dst := netip.AddrPortFrom(svc.clusterIP, svc.port)
		for range spread {
			if a := probeFrom(ctx, from, svc.proto, dst, 2*time.Second); a.Responder != "" {
				if seen[svc.name] == nil {
					seen[svc.name] = map[string]bool{}
				}
				seen[svc.name][a.Responder] = true
			}
		}
		names := slices.Sorted(maps.Keys(seen[svc.name]))
		if len(names) < 2 {
			fmt.Fprintf(w, "FAIL %s: %d more connections to %s all reached the same backend (%v)\n", svc.name, spread, dst, names)
			failed++
			continue
		}
		fmt.Fprintf(w, "ok   %s: new connections spread over %s\n", svc.name, strings.Join(names, ", "))
	}
	return failed
}

// services lists the services of the checks, in their order.
func services(cs []check) []*demoService {
	var out []*demoService
	for _, c := range cs {
		if !slices.Contains(out, c.svc) {
			out = append(out, c.svc)
		}
	}
	return out
}

// verify checks an answer against what the check expects.
func verify(c check, a answer) error {
	if c.dropped {
		if a.Err == "" {
			return fmt.Errorf("answered by %s, but must be dropped", a.Responder)
		}
		if !strings.Contains(a.Err, "timeout") {
			return fmt.Errorf("must time out (dropped), got: %s", a.Err)
		}
		return nil
	}
	if a.Err != "" {
		return fmt.Errorf("no answer: %s", a.Err)
	}
	if !slices.ContainsFunc(c.svc.backends, func(p *pod) bool { return p.name == a.Responder }) {
		return fmt.Errorf("answered by %q, not a backend of %s", a.Responder, c.svc.name)
	}
	if a.Remote != c.dst.String() {
		return fmt.Errorf("%s answered, but the client saw %s as its peer, not %s", a.Responder, a.Remote, c.dst)
	}
	if c.clientSource {
		peer, err := netip.ParseAddrPort(a.Peer)
		if err != nil || peer.Addr() != hostAddr.Addr() {
			return fmt.Errorf("%s saw the source %s, not the client %s", a.Responder, a.Peer, hostAddr.Addr())
		}
	}
	return nil
}
