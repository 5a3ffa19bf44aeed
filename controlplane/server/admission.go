package server

import (
	"context"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Limits bound what a stream may cost before it is bound to a node: a
// stream is admitted (rate and counts), authenticated from its metadata,
// and given a deadline for its first request, all before it may wait for
// one of the sync slots that read first requests.
type Limits struct {
	// FirstRequestTimeout ends a stream whose first request has not
	// arrived in time. 0 means 10 s.
	FirstRequestTimeout time.Duration
	// MaxPendingPerPeer bounds the streams of one peer address that have
	// no identity yet: neither credentials nor, for ClaimedNode, a first
	// request. 0 means 16 (every agent of a simulated fleet shares one
	// address: it sets no limit).
	MaxPendingPerPeer int
	// MaxPending bounds every stream that has no identity yet. 0 means 1024.
	MaxPending int
	// MaxStreams bounds the streams served at once. 0 means 100,000.
	MaxStreams int
	// For each count, a negative limit means none.
	// NewStreamsPerSecond and NewStreamsBurst are a token bucket on new
	// streams. 0 means 2,000 a second with a burst of 5,000; a negative
	// rate means no limit.
	NewStreamsPerSecond float64
	NewStreamsBurst     int
}

func (l *Limits) defaults() {
	if l.FirstRequestTimeout == 0 {
		l.FirstRequestTimeout = 10 * time.Second
	}
	if l.MaxPendingPerPeer == 0 {
		l.MaxPendingPerPeer = 16
	}
	if l.MaxPending == 0 {
		l.MaxPending = 1024
	}
	if l.MaxStreams == 0 {
		l.MaxStreams = 100_000
	}
	if l.NewStreamsPerSecond == 0 {
		l.NewStreamsPerSecond = 2000
	}
	if l.NewStreamsBurst == 0 {
		l.NewStreamsBurst = 5000
	}
}

// admission counts streams and rate-limits new ones.
type admission struct {
	limits  Limits
	limiter *rate.Limiter

	mu      sync.Mutex
	streams int
	pending int
	perPeer map[string]int // pending streams by peer address
}

func newAdmission(l Limits) *admission {
	l.defaults()
	lim := rate.NewLimiter(rate.Inf, 0)
	if l.NewStreamsPerSecond > 0 {
		lim = rate.NewLimiter(rate.Limit(l.NewStreamsPerSecond), l.NewStreamsBurst)
	}
	return &admission{limits: l, limiter: lim, perPeer: map[string]int{}}
}

// ticket is an admitted stream's place; bound moves it out of the pending
// counts once the stream has an identity, done releases it.
type ticket struct {
	a       *admission
	peer    string
	isBound bool
}

// admit takes a place for a new stream or says why there is none.
func (a *admission) admit(ctx context.Context) (*ticket, string, error) {
	host := peerHost(ctx)
	if !a.limiter.Allow() {
		return nil, "rate", status.Error(codes.ResourceExhausted, "too many new streams; retry later")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case over(a.streams, a.limits.MaxStreams):
		return nil, "streams", status.Error(codes.ResourceExhausted, "too many streams")
	case over(a.pending, a.limits.MaxPending):
		return nil, "pending", status.Error(codes.ResourceExhausted, "too many streams awaiting their first request")
	case over(a.perPeer[host], a.limits.MaxPendingPerPeer):
		return nil, "peer", status.Errorf(codes.ResourceExhausted, "too many streams from %s awaiting their first request", host)
	}
	a.streams++
	a.pending++
	a.perPeer[host]++
	return &ticket{a: a, peer: host}, "", nil
}

func over(n, limit int) bool { return limit >= 0 && n >= limit }

// bound marks the stream as having an identity: it no longer counts as
// pending.
func (t *ticket) bound() {
	t.a.mu.Lock()
	defer t.a.mu.Unlock()
	t.unpend()
}

// done releases the stream's place.
func (t *ticket) done() {
	t.a.mu.Lock()
	defer t.a.mu.Unlock()
	t.unpend()
	t.a.streams--
}

// unpend stops counting the stream as pending, once; under t.a.mu.
func (t *ticket) unpend() {
	if t.isBound {
		return
	}
	t.isBound = true
	a := t.a
	a.pending--
	if a.perPeer[t.peer]--; a.perPeer[t.peer] <= 0 {
		delete(a.perPeer, t.peer)
	}
}

// peerHost returns the stream's peer address without its port.
func peerHost(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return p.Addr.String()
	}
	return host
}
