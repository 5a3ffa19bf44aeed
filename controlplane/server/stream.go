package server

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/spoke-proxy/spoke/controlplane/store"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

type viewStream = grpc.BidiStreamingServer[spokev1.StreamViewsRequest, spokev1.StreamViewsResponse]

// StreamViews implements spokev1.ViewServiceServer. A stream goes through
// a handshake (admitted, authenticated, its first request read and bound
// to a node), then runs a receive pump and a send loop beside the session
// that settles acknowledgements and sends the node's view, as
// go-control-plane's server does.
func (s *Server) StreamViews(stream viewStream) error {
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	// Sent with the first response: agents send digests of their versions
	// to a control plane that reads them.
	if err := stream.SetHeader(metadata.Pairs(spokev1.VersionsDigestHeader, spokev1.VersionsDigestScheme)); err != nil {
		return err
	}
	t, reason, err := s.admission.admit(ctx)
	if err != nil {
		s.metrics.rejectedStreams.WithLabelValues(reason).Inc()
		return err
	}
	defer t.done()
	c := newConn("", cancel)
	if p, ok := peer.FromContext(ctx); ok {
		c.peer = p.Addr.String()
	}
	sess, err := s.handshake(ctx, stream, c, t)
	if err != nil {
		return err
	}
	defer s.detach(c)
	defer s.opts.Store.Unsubscribe(sess.sub)
	sess.requests, sess.recvErr = receive(ctx, stream)
	sess.outgoing, sess.sendErr = send(ctx, stream)
	return sess.run(ctx)
}

// handshake authenticates the stream, reads and checks its first request,
// binds it to a node and computes the first delta. The identity comes from
// the stream's metadata, before anything is read or waited for. The first
// request carries every version the agent holds, or their digest (then the
// versions follow only if it differs: initial): it is read only once the
// store holds a whole view, and only by a bounded number of streams at a
// time (sync slots), so that thousands of agents reconnecting to a
// starting control plane do not all sit decoded in memory at once. A
// stream that names its own node (ClaimedNode) has no identity before its
// first request, so it takes a slot only after that request arrived.
func (s *Server) handshake(ctx context.Context, stream viewStream, c *conn, t *ticket) (*session, error) {
	node, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	var first *spokev1.StreamViewsRequest
	if node == "" {
		if first, err = s.firstRequest(ctx, stream); err != nil {
			return nil, err
		}
		node = first.GetNodeName()
	}
	if node == "" {
		return nil, status.Error(codes.InvalidArgument, "no node name")
	}
	t.bound()
	select {
	case <-s.opts.Store.Ready():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := s.syncs.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	defer s.syncs.Release(1)
	if first == nil {
		if first, err = s.firstRequest(ctx, stream); err != nil {
			return nil, err
		}
	}
	log := s.log.With("node", node, "peer", c.peer)
	if err := s.catchUp(ctx, log, first.GetInitialApiRevisions()); err != nil {
		return nil, err
	}
	// Subscribe before computing the first delta, so that a change published
	// in between wakes the stream instead of waiting for the next one.
	sub := s.opts.Store.Subscribe(0)
	delta, err := s.initial(ctx, stream, node, first)
	if err != nil {
		s.opts.Store.Unsubscribe(sub)
		return nil, err
	}
	c.node = node
	s.attach(c)
	log.Info("agent connected", "held", len(first.GetInitialResourceVersions()), "digest", len(first.GetInitialVersionsDigest()) > 0)
	sub.SetSynced(delta.Rev)
	// The first response is sent even when empty: it tells the agent that
	// it holds its whole view.
	return &session{s: s, c: c, log: log, sub: sub, firstRev: delta.Rev, queue: s.split(delta), target: delta.Rev}, nil
}

// initial computes a stream's first delta from what its first request
// says the agent holds: its versions, or their digest. A digest that
// differs from the view's is answered with send_initial_versions, and the
// next request, which must bring the versions, decides.
func (s *Server) initial(ctx context.Context, stream viewStream, node string, first *spokev1.StreamViewsRequest) (store.Delta, error) {
	digest := first.GetInitialVersionsDigest()
	if digest == nil {
		s.metrics.initialRequests.WithLabelValues("versions").Inc()
		return s.opts.Store.Initial(node, first.GetInitialResourceVersions()), nil
	}
	if d, ok := s.opts.Store.InitialDigest(node, digest); ok {
		s.metrics.initialRequests.WithLabelValues("digest_matched").Inc()
		return d, nil
	}
	s.metrics.initialRequests.WithLabelValues("digest_differed").Inc()
	if err := stream.Send(&spokev1.StreamViewsResponse{SendInitialVersions: true}); err != nil {
		return store.Delta{}, err
	}
	held, err := s.receiveFirst(ctx, stream, validateVersions)
	if err != nil {
		return store.Delta{}, err
	}
	return s.opts.Store.Initial(node, held.GetInitialResourceVersions()), nil
}

// catchUp waits until this replica's state has followed the API as far as
// the state the agent holds, so that an agent failing over from a replica
// that was ahead is never sent older views. A replica still behind after
// CatchUpTimeout refuses the stream with Aborted (a sequencer check that
// failed); the agent tries again, perhaps on another replica.
func (s *Server) catchUp(ctx context.Context, log *slog.Logger, held *spokev1.ApiRevisions) error {
	if s.opts.Store.APIRevisions().AtLeast(held) {
		return nil
	}
	start := time.Now()
	log.Info("agent holds a newer state than this replica; waiting to catch up", "agent", held, "replica", s.opts.Store.APIRevisions())
	s.metrics.catchUps.Inc()
	wctx, cancel := context.WithTimeout(ctx, s.opts.CatchUpTimeout)
	defer cancel()
	if err := s.opts.Store.WaitAPIRevisions(wctx, held); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.metrics.rejectedStreams.WithLabelValues("behind_agent").Inc()
		return status.Errorf(codes.Aborted, "this replica is behind the state the agent holds: %v", err)
	}
	log.Info("caught up with the agent's state", "waited", time.Since(start))
	return nil
}

// authenticate returns the node of the stream's credentials, or "" when
// the Authenticator lets the agent name its node.
func (s *Server) authenticate(ctx context.Context) (string, error) {
	node, err := s.opts.Authenticator.NodeName(ctx)
	switch {
	case errors.Is(err, ErrUnauthenticated):
		s.metrics.rejectedStreams.WithLabelValues("unauthenticated").Inc()
		s.log.Warn("refusing an agent stream", "peer", peerHost(ctx), "err", err)
		return "", status.Errorf(codes.Unauthenticated, "binding stream to a node: %v", err)
	case err != nil:
		s.metrics.rejectedStreams.WithLabelValues("auth_unavailable").Inc()
		return "", status.Errorf(codes.Unavailable, "binding stream to a node: %v", err)
	}
	return node, nil
}

// firstRequest reads and checks the stream's first request, which must
// arrive within the first-request timeout.
func (s *Server) firstRequest(ctx context.Context, stream viewStream) (*spokev1.StreamViewsRequest, error) {
	return s.receiveFirst(ctx, stream, validateFirst)
}

// receiveFirst reads a request of the handshake, checked by validate,
// which must arrive within the first-request timeout.
func (s *Server) receiveFirst(ctx context.Context, stream viewStream, validate func(*spokev1.StreamViewsRequest) error) (*spokev1.StreamViewsRequest, error) {
	type result struct {
		req *spokev1.StreamViewsRequest
		err error
	}
	ch := make(chan result, 1)
	go func() {
		req, err := stream.Recv()
		ch <- result{req, err}
	}()
	timer := time.NewTimer(s.admission.limits.FirstRequestTimeout)
	defer timer.Stop()
	select {
	case <-timer.C:
		s.metrics.rejectedStreams.WithLabelValues("first_request_timeout").Inc()
		return nil, status.Errorf(codes.DeadlineExceeded, "no first request within %s", s.admission.limits.FirstRequestTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		if err := validate(r.req); err != nil {
			s.metrics.rejectedStreams.WithLabelValues("invalid").Inc()
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return r.req, nil
	}
}

// receive pumps the agent's requests into a channel until the stream ends
// or ctx is done.
func receive(ctx context.Context, stream viewStream) (<-chan *spokev1.StreamViewsRequest, <-chan error) {
	requests := make(chan *spokev1.StreamViewsRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case requests <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	return requests, recvErr
}

// send writes responses, already in wire form, until ctx is done.
func send(ctx context.Context, stream viewStream) (chan<- [][]byte, <-chan error) {
	outgoing := make(chan [][]byte, 1)
	sendErr := make(chan error, 1)
	go func() {
		for {
			select {
			case b := <-outgoing:
				if err := stream.SendMsg(&rawResponse{b}); err != nil {
					sendErr <- err
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return outgoing, sendErr
}

// session sends a node its view one response at a time and settles each
// response's acknowledgement before the next.
type session struct {
	s   *Server
	c   *conn
	log *slog.Logger
	sub *store.Subscription
	// firstRev is the revision of the first delta: content older than it
	// says nothing about programming latency.
	firstRev uint64
	// queue holds the parts of the current delta not yet sent; the agent is
	// synchronised to target once all of them are acknowledged.
	queue    []part
	target   uint64
	dirty    bool
	ackTimer <-chan time.Time

	requests <-chan *spokev1.StreamViewsRequest
	recvErr  <-chan error
	outgoing chan<- [][]byte
	sendErr  <-chan error
}

func (ss *session) run(ctx context.Context) error {
	for {
		if ss.c.pending() == "" {
			ss.sendNext()
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case err := <-ss.recvErr:
			if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
				ss.log.Info("agent disconnected")
				return nil
			}
			ss.log.Info("agent stream ended", "err", err)
			return err
		case err := <-ss.sendErr:
			return err
		case <-ss.ackTimer:
			ss.s.metrics.stuckDisconnects.Inc()
			ss.log.Warn("agent did not acknowledge in time; disconnecting", "nonce", ss.c.pending(), "timeout", ss.s.opts.AckTimeout)
			return status.Errorf(codes.DeadlineExceeded, "response %s not acknowledged within %s", ss.c.pending(), ss.s.opts.AckTimeout)
		case <-ss.sub.C():
			ss.dirty = true
		case req := <-ss.requests:
			if err := ss.settle(req); err != nil {
				return err
			}
		}
	}
}

// sendNext sends the next part of the current delta, computing a new delta
// first when the store changed and the current one is done.
func (ss *session) sendNext() {
	s, c := ss.s, ss.c
	if len(ss.queue) == 0 && ss.dirty {
		ss.dirty = false
		d := s.opts.Store.Since(c.node, c.syncedRev(), c.skipped())
		if d.Empty() {
			c.setSynced(d.Rev)
			ss.sub.SetSynced(d.Rev)
		} else {
			ss.queue, ss.target = s.split(d), d.Rev
		}
	}
	if len(ss.queue) == 0 {
		return
	}
	p := ss.queue[0]
	// Sent parts are not kept: a session holds its first delta (every
	// resource of the view) only until it is sent, not for its lifetime.
	ss.queue[0] = part{}
	ss.queue = ss.queue[1:]
	if len(ss.queue) == 0 {
		ss.queue = nil
	}
	nonce := c.nextNonce()
	ss.outgoing <- p.encode(nonce)
	c.sent(nonce, p, len(ss.queue) == 0, ss.target)
	s.metrics.responses.Inc()
	s.metrics.resources.Add(float64(len(p.resources)))
	ss.ackTimer = time.After(s.opts.AckTimeout)
}

// settle handles the agent's acknowledgement of the response in flight.
func (ss *session) settle(req *spokev1.StreamViewsRequest) error {
	c := ss.c
	if err := validateAck(req); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if req.GetResponseNonce() != c.pending() {
		return status.Errorf(codes.InvalidArgument, "acknowledged nonce %q, but the response in flight is %q", req.GetResponseNonce(), c.pending())
	}
	ss.ackTimer = nil
	if rej := req.GetError(); rej != nil {
		ss.s.metrics.nacks.Inc()
		ss.log.Warn("agent rejected a response", "nonce", req.GetResponseNonce(), "error", rej.GetMessage(), "resources", rej.GetResourceNames())
	} else {
		observeProgrammed(ss.s.metrics.programming, c.inFlightResources(), ss.firstRev, time.Now())
	}
	if rev, done := c.acked(req.GetError()); done {
		ss.sub.SetSynced(rev)
	}
	return nil
}
