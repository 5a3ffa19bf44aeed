package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/spoke-proxy/spoke/controlplane/store"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Limits on what an agent may send.
const (
	maxInitialResources = 1 << 20
	maxNameLen          = 512
	maxVersionLen       = 64
	maxNodeNameLen      = 253
	maxRejectionLen     = 4096
)

// ErrUnauthenticated is wrapped by Authenticator errors that reject the
// peer's identity, as opposed to failures to check it.
var ErrUnauthenticated = errors.New("unauthenticated")

// Authenticator binds a stream to the node whose view it may receive.
type Authenticator interface {
	// NodeName returns the node of the stream's peer. claimed is the name
	// the agent sent; an authenticating implementation ignores it.
	NodeName(ctx context.Context, claimed string) (string, error)
}

// ClaimedNode trusts the node name the agent sends. It is for tests and
// for clusters where the stream is otherwise protected.
type ClaimedNode struct{}

// NodeName implements Authenticator.
func (ClaimedNode) NodeName(_ context.Context, claimed string) (string, error) { return claimed, nil }

// Options configure a Server.
type Options struct {
	Store *store.Store
	// Authenticator binds streams to nodes; ClaimedNode when nil.
	Authenticator Authenticator
	// AckTimeout disconnects an agent that has not acknowledged a response
	// in time. 0 means one minute.
	AckTimeout time.Duration
	// MaxResponseBytes splits responses larger than this. 0 means 4 MiB,
	// gRPC's default receive limit.
	MaxResponseBytes int
	// MaxConcurrentSyncs bounds the streams whose first request (every
	// version the agent holds) is read and compared at once. 0 means 32.
	MaxConcurrentSyncs int
	// Registerer receives the server's metrics; none when nil.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Server serves ViewService and ControlPlaneInspectionService.
type Server struct {
	spokev1.UnimplementedViewServiceServer
	spokev1.UnimplementedControlPlaneInspectionServiceServer

	opts    Options
	metrics *metrics
	log     *slog.Logger

	syncs *semaphore.Weighted

	mu    sync.Mutex
	conns map[string]*conn // by node name
}

var (
	_ spokev1.ViewServiceServer                   = (*Server)(nil)
	_ spokev1.ControlPlaneInspectionServiceServer = (*Server)(nil)
)

// New returns a Server.
func New(opts Options) *Server {
	if opts.Authenticator == nil {
		opts.Authenticator = ClaimedNode{}
	}
	if opts.AckTimeout == 0 {
		opts.AckTimeout = time.Minute
	}
	if opts.MaxResponseBytes == 0 {
		opts.MaxResponseBytes = 4 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxConcurrentSyncs == 0 {
		opts.MaxConcurrentSyncs = 32
	}
	return &Server{
		opts:    opts,
		syncs:   semaphore.NewWeighted(int64(opts.MaxConcurrentSyncs)),
		metrics: newMetrics(opts.Registerer),
		log:     opts.Logger,
		conns:   make(map[string]*conn),
	}
}

// ServerOptions returns the gRPC server options the stream needs: the codec
// that sends pre-encoded responses.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(newRawCodec())}
}

// Register registers both services on g.
func (s *Server) Register(g *grpc.Server) {
	spokev1.RegisterViewServiceServer(g, s)
	spokev1.RegisterControlPlaneInspectionServiceServer(g, s)
}

// StreamViews implements spokev1.ViewServiceServer.
func (s *Server) StreamViews(stream grpc.BidiStreamingServer[spokev1.StreamViewsRequest, spokev1.StreamViewsResponse]) error {
	ctx := stream.Context()
	// The first request carries every version the agent holds: it is read
	// only once the store holds a whole view, and only by a bounded number
	// of streams at a time, so that thousands of agents reconnecting to a
	// starting control plane do not all sit decoded in memory at once.
	select {
	case <-s.opts.Store.Ready():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := s.syncs.Acquire(ctx, 1); err != nil {
		return err
	}
	syncing := true
	endSync := func() {
		if syncing {
			syncing = false
			s.syncs.Release(1)
		}
	}
	defer endSync()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := validateFirst(first); err != nil {
		s.metrics.rejectedStreams.WithLabelValues("invalid").Inc()
		return status.Error(codes.InvalidArgument, err.Error())
	}
	node, err := s.opts.Authenticator.NodeName(ctx, first.GetNodeName())
	switch {
	case errors.Is(err, ErrUnauthenticated):
		s.metrics.rejectedStreams.WithLabelValues("unauthenticated").Inc()
		s.log.Warn("refusing an agent stream", "claimed_node", first.GetNodeName(), "err", err)
		return status.Errorf(codes.Unauthenticated, "binding stream to a node: %v", err)
	case err != nil:
		s.metrics.rejectedStreams.WithLabelValues("auth_unavailable").Inc()
		return status.Errorf(codes.Unavailable, "binding stream to a node: %v", err)
	case node == "":
		return status.Error(codes.InvalidArgument, "no node name")
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c := newConn(node, cancel)
	if p, ok := peer.FromContext(ctx); ok {
		c.peer = p.Addr.String()
	}
	s.attach(c)
	defer s.detach(c)
	log := s.log.With("node", node, "peer", c.peer)
	log.Info("agent connected", "held", len(first.GetInitialResourceVersions()))

	// Subscribe before computing the first delta, so that a change published
	// in between wakes the stream instead of waiting for the next one.
	sub := s.opts.Store.Subscribe(0)
	defer s.opts.Store.Unsubscribe(sub)
	delta := s.opts.Store.Initial(node, first.GetInitialResourceVersions())
	sub.SetSynced(delta.Rev)
	first = nil
	endSync()

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

	// queue holds the parts of the current delta not yet sent; the agent
	// is synchronised to target once all of them are acknowledged. The
	// first response is sent even when empty: it tells the agent that it
	// holds its whole view.
	queue := s.split(delta)
	target := delta.Rev
	var ackTimer <-chan time.Time
	dirty := false
	for {
		if c.pending() == "" {
			if len(queue) == 0 && dirty {
				dirty = false
				d := s.opts.Store.Since(node, c.syncedRev(), c.skipped())
				if d.Empty() {
					c.setSynced(d.Rev)
					sub.SetSynced(d.Rev)
				} else {
					queue, target = s.split(d), d.Rev
				}
			}
			if len(queue) > 0 {
				p := queue[0]
				queue = queue[1:]
				nonce := c.nextNonce()
				outgoing <- p.encode(nonce)
				c.sent(nonce, p, len(queue) == 0, target)
				s.metrics.responses.Inc()
				s.metrics.resources.Add(float64(len(p.resources)))
				ackTimer = time.After(s.opts.AckTimeout)
			}
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case err := <-recvErr:
			if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
				log.Info("agent disconnected")
				return nil
			}
			log.Info("agent stream ended", "err", err)
			return err
		case err := <-sendErr:
			return err
		case <-ackTimer:
			s.metrics.stuckDisconnects.Inc()
			log.Warn("agent did not acknowledge in time; disconnecting", "nonce", c.pending(), "timeout", s.opts.AckTimeout)
			return status.Errorf(codes.DeadlineExceeded, "response %s not acknowledged within %s", c.pending(), s.opts.AckTimeout)
		case <-sub.C():
			dirty = true
		case req := <-requests:
			if err := validateAck(req); err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			if req.GetResponseNonce() != c.pending() {
				return status.Errorf(codes.InvalidArgument, "acknowledged nonce %q, but the response in flight is %q", req.GetResponseNonce(), c.pending())
			}
			ackTimer = nil
			if rej := req.GetError(); rej != nil {
				s.metrics.nacks.Inc()
				log.Warn("agent rejected a response", "nonce", req.GetResponseNonce(), "error", rej.GetMessage(), "resources", rej.GetResourceNames())
			}
			if req.GetError() == nil {
				// delta is still the first one: its revision is the connection's.
				observeProgrammed(s.metrics.programming, c.inFlightResources(), delta.Rev, time.Now())
			}
			if rev, done := c.acked(req.GetError()); done {
				sub.SetSynced(rev)
			}
		}
	}
}

func validateFirst(req *spokev1.StreamViewsRequest) error {
	n := req.GetNodeName()
	if len(n) > maxNodeNameLen {
		return fmt.Errorf("node name longer than %d bytes", maxNodeNameLen)
	}
	if req.GetResponseNonce() != "" || req.GetError() != nil {
		return errors.New("first request acknowledges nothing")
	}
	if len(req.GetInitialResourceVersions()) > maxInitialResources {
		return fmt.Errorf("more than %d initial resources", maxInitialResources)
	}
	for name, v := range req.GetInitialResourceVersions() {
		if len(name) > maxNameLen || len(v) > maxVersionLen || name == "" {
			return fmt.Errorf("initial resource %.64q: bad name or version", name)
		}
	}
	return nil
}

func validateAck(req *spokev1.StreamViewsRequest) error {
	if len(req.GetInitialResourceVersions()) > 0 {
		return errors.New("initial_resource_versions after the first request")
	}
	if req.GetResponseNonce() == "" {
		return errors.New("request acknowledges no nonce")
	}
	if rej := req.GetError(); rej != nil {
		if len(rej.GetMessage()) > maxRejectionLen || len(rej.GetResourceNames()) > maxInitialResources {
			return errors.New("rejection too large")
		}
	}
	return nil
}

// part is one response's worth of a delta.
type part struct {
	resources []*store.Encoded
	removed   []string
}

// encode returns the response's wire form as slices: the nonce, every
// resource's shared framed bytes, then the removals.
func (p part) encode(nonce string) [][]byte {
	out := make([][]byte, 0, len(p.resources)+2)
	head := protowire.AppendTag(nil, 1, protowire.BytesType)
	out = append(out, protowire.AppendString(head, nonce))
	for _, r := range p.resources {
		out = append(out, r.Framed)
	}
	if len(p.removed) > 0 {
		var tail []byte
		for _, r := range p.removed {
			tail = protowire.AppendTag(tail, 3, protowire.BytesType)
			tail = protowire.AppendString(tail, r)
		}
		out = append(out, tail)
	}
	return out
}

// split cuts a delta into responses no larger than the limit. A single
// resource larger than the limit travels alone (the agent's receive limit
// is set above the largest resource the model produces).
func (s *Server) split(d store.Delta) []part {
	limit := s.opts.MaxResponseBytes - 1024
	var parts []part
	cur, size := part{}, 0
	flush := func() {
		parts = append(parts, cur)
		cur, size = part{}, 0
	}
	for _, r := range d.Resources {
		if size > 0 && size+len(r.Bytes)+8 > limit {
			flush()
		}
		cur.resources = append(cur.resources, r)
		size += len(r.Bytes) + 8
	}
	for _, r := range d.Removed {
		if size > 0 && size+len(r)+8 > limit {
			flush()
		}
		cur.removed = append(cur.removed, r)
		size += len(r) + 8
	}
	flush()
	return parts
}

func (s *Server) attach(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.conns[c.node]; old != nil {
		old.cancel(errors.New("replaced by a newer stream of the same node"))
	}
	s.conns[c.node] = c
	s.metrics.connected.Set(float64(len(s.conns)))
}

func (s *Server) detach(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[c.node] == c {
		delete(s.conns, c.node)
	}
	s.metrics.connected.Set(float64(len(s.conns)))
}

// conn is the state of one agent stream.
type conn struct {
	node        string
	peer        string
	connectedAt time.Time
	cancel      context.CancelCauseFunc

	mu            sync.Mutex
	nonce         uint64
	inFlight      string
	inFlightPart  part
	inFlightLast  bool
	inFlightRev   uint64
	synced        uint64
	skip          map[string]string // rejected versions, not sent again
	nacks         []*spokev1.NackStatus
	resourcesSent uint64
	responsesSent uint64
}

const keptNacks = 16

func newConn(node string, cancel context.CancelCauseFunc) *conn {
	return &conn{node: node, cancel: cancel, connectedAt: time.Now(), skip: map[string]string{}}
}

func (c *conn) nextNonce() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nonce++
	return strconv.FormatUint(c.nonce, 10)
}

func (c *conn) pending() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inFlight
}

func (c *conn) syncedRev() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced
}

func (c *conn) setSynced(rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.synced = rev
}

func (c *conn) skipped() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]string, len(c.skip))
	for k, v := range c.skip {
		out[k] = v
	}
	return out
}

func (c *conn) sent(nonce string, p part, last bool, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inFlight, c.inFlightPart, c.inFlightLast, c.inFlightRev = nonce, p, last, rev
	c.responsesSent++
	c.resourcesSent += uint64(len(p.resources))
}

// acked settles the response in flight. It returns the revision the agent
// is now synchronised to, and whether the delta is complete.
func (c *conn) acked(rej *spokev1.Rejection) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.inFlightPart
	if rej != nil {
		rejected := map[string]bool{}
		for _, n := range rej.GetResourceNames() {
			rejected[n] = true
		}
		ns := &spokev1.NackStatus{Nonce: c.inFlight, Message: rej.GetMessage(), Versions: map[string]string{}}
		for _, r := range p.resources {
			if len(rejected) == 0 || rejected[r.Name] {
				c.skip[r.Name] = r.Version
				ns.Versions[r.Name] = r.Version
			}
		}
		c.nacks = append(c.nacks, ns)
		if len(c.nacks) > keptNacks {
			c.nacks = c.nacks[len(c.nacks)-keptNacks:]
		}
	} else {
		for _, r := range p.resources {
			delete(c.skip, r.Name)
		}
	}
	c.inFlight = ""
	c.inFlightPart = part{}
	if !c.inFlightLast {
		return c.synced, false
	}
	c.synced = c.inFlightRev
	return c.synced, true
}
