package lightfleet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/protobuf/proto"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// errProtocol marks a response that breaks the protocol; the stream is
// dropped and opened again, as the real agent does.
var errProtocol = errors.New("protocol violation")

// applied is what a light agent reports after each response it applied.
type applied struct {
	at      time.Time
	put     []Item
	removed []string
}

// lightAgent is one light agent: a node's stream and the hashes of the
// resources it holds.
type lightAgent struct {
	name  string
	conn  *grpc.ClientConn
	codec *codec
	// onApplied is called after each response, before the ACK is sent.
	onApplied func(applied)
	// connecting bounds the worker's streams that wait for their first
	// response (a slot is taken by sending into it).
	connecting chan struct{}

	mu        sync.Mutex
	held      map[string]Hash
	revisions []byte
	digests   bool // the last stream's control plane reads digests
	acks      uint64
	nacks     uint64
	lastNack  string
}

func newAgent(name string, conn *grpc.ClientConn, c *codec, connecting chan struct{}, onApplied func(applied)) *lightAgent {
	return &lightAgent{name: name, conn: conn, codec: c, connecting: connecting, onApplied: onApplied, held: map[string]Hash{}}
}

// run streams the node's view until ctx is done, reconnecting with
// jittered backoff (the connection's own backoff decides when a control
// plane that went away is back).
func (a *lightAgent) run(ctx context.Context) error {
	const minBackoff, maxBackoff = 250 * time.Millisecond, 30 * time.Second
	backoff := minBackoff
	for {
		progressed, err := a.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if progressed && !errors.Is(err, errProtocol) {
			backoff = minBackoff
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (a *lightAgent) stream(ctx context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A connection that is reconnecting on its own (its control plane went
	// away) is waited for outside the worker's connecting slots: holding a
	// slot meanwhile kept nodes whose connections were back from streaming.
	// An idle one connects when its stream opens, within a slot.
	for st := a.conn.GetState(); st != connectivity.Ready && st != connectivity.Idle; st = a.conn.GetState() {
		if !a.conn.WaitForStateChange(ctx, st) {
			return false, ctx.Err()
		}
	}
	select {
	case a.connecting <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	connecting := true
	release := func() {
		if connecting {
			<-a.connecting
			connecting = false
		}
	}
	defer release()
	s, err := a.conn.NewStream(ctx, &spokev1.ViewService_ServiceDesc.Streams[0], spokev1.ViewService_StreamViews_FullMethodName,
		grpc.WaitForReady(true), grpc.ForceCodecV2(a.codec))
	if err != nil {
		return false, err
	}
	first, held, err := a.hello()
	if err != nil {
		return false, err
	}
	if err := s.SendMsg(first); err != nil {
		return false, err
	}
	lastNonce := "" // nonces are per stream
	asked := false
	for {
		var resp response
		if err := s.RecvMsg(&resp); err != nil {
			return progressed, err
		}
		if !progressed && !asked {
			reads, err := spokev1.ReadsDigests(s, first.InitialVersionsDigest != nil)
			a.mu.Lock()
			a.digests = reads
			a.mu.Unlock()
			if err != nil {
				return false, err
			}
		}
		if resp.sendHeld {
			if first.InitialVersionsDigest == nil || asked || progressed {
				return progressed, fmt.Errorf("%w: send_initial_versions unasked for", errProtocol)
			}
			asked = true
			if err := s.SendMsg(&spokev1.StreamViewsRequest{InitialResourceVersions: held}); err != nil {
				return progressed, err
			}
			continue
		}
		progressed = true
		release()
		if resp.nonce == "" || len(resp.nonce) > 64 || resp.nonce == lastNonce {
			return progressed, fmt.Errorf("%w: response nonce %.64q", errProtocol, resp.nonce)
		}
		lastNonce = resp.nonce
		if err := s.SendMsg(a.handle(&resp)); err != nil {
			return progressed, err
		}
	}
}

// hello is a stream's first request: the node, and the versions and API
// revisions it holds, so that the control plane sends only what changed;
// the versions' digest instead of them to a control plane that announced
// it reads digests, as the real agent does. held is the versions.
func (a *lightAgent) hello() (req *spokev1.StreamViewsRequest, held map[string]string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	held = make(map[string]string, len(a.held))
	for name, h := range a.held {
		held[name] = h.String()
	}
	req = &spokev1.StreamViewsRequest{NodeName: a.name}
	if a.digests && len(held) > 0 {
		req.InitialVersionsDigest = spokev1.VersionsDigest(held)
	} else {
		req.InitialResourceVersions = held
	}
	if a.revisions != nil {
		req.InitialApiRevisions = &spokev1.ApiRevisions{}
		if err := proto.Unmarshal(a.revisions, req.InitialApiRevisions); err != nil {
			return nil, nil, fmt.Errorf("held API revisions: %w", err)
		}
	}
	return req, held, nil
}

// handle holds what a response carries and returns its ACK, or its NACK
// naming the resources whose content does not hash to their version (they
// are not held: the agent keeps its last good state).
func (a *lightAgent) handle(resp *response) *spokev1.StreamViewsRequest {
	var (
		rejected []string
		put      []Item
		removed  []string
	)
	seen := make(map[string]bool, len(resp.resources))
	a.mu.Lock()
	for _, r := range resp.resources {
		if r.name == "" || seen[r.name] || !r.hasContent || r.hash.String() != r.version {
			rejected = append(rejected, r.name)
			continue
		}
		seen[r.name] = true
		a.held[r.name] = r.hash
		put = append(put, Item{Name: r.name, Version: r.version})
	}
	for _, name := range resp.removed {
		if seen[name] || name == spokev1.NodeResourceName {
			rejected = append(rejected, name)
			continue
		}
		if _, ok := a.held[name]; ok {
			delete(a.held, name)
			removed = append(removed, name)
		}
	}
	if resp.revisions != nil {
		a.revisions = resp.revisions
	}
	ack := &spokev1.StreamViewsRequest{ResponseNonce: resp.nonce}
	if len(rejected) == 0 {
		a.acks++
	} else {
		a.nacks++
		a.lastNack = fmt.Sprintf("%d resources whose content does not match their version or that break the response's rules, first %q", len(rejected), rejected[0])
		ack.Error = &spokev1.Rejection{Message: a.lastNack, ResourceNames: rejected}
	}
	a.mu.Unlock()
	a.onApplied(applied{at: time.Now(), put: put, removed: removed})
	return ack
}

// state returns the hashes the agent holds, by resource name.
func (a *lightAgent) state() []Item {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Item, 0, len(a.held))
	for name, h := range a.held {
		out = append(out, Item{Name: name, Version: h.String()})
	}
	return out
}
