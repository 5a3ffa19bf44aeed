package server

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/spoke-proxy/spoke/controlplane/store"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// ErrUnauthenticated is wrapped by Authenticator errors that reject the
// peer's identity, as opposed to failures to check it.
var ErrUnauthenticated = errors.New("unauthenticated")

// Authenticator binds a stream to the node whose view it may receive.
type Authenticator interface {
	// NodeName returns the node of the stream's peer from the credentials
	// in ctx (gRPC metadata, TLS peer), before any request is read. An
	// empty name lets the agent name its node in its first request.
	NodeName(ctx context.Context) (string, error)
}

// ClaimedNode trusts the node name the agent sends. It is for tests and
// for clusters where the stream is otherwise protected.
type ClaimedNode struct{}

// NodeName implements Authenticator: the agent names its node.
func (ClaimedNode) NodeName(context.Context) (string, error) { return "", nil }

// Options configure a Server.
type Options struct {
	Store *store.Store
	// Authenticator binds streams to nodes; ClaimedNode when nil.
	Authenticator Authenticator
	// AckTimeout disconnects an agent that has not acknowledged a response
	// in time. 0 means one minute.
	AckTimeout time.Duration
	// MaxResponseBytes splits responses larger than this. 0 means
	// spokev1.DefaultResponseBytes.
	MaxResponseBytes int
	// MaxConcurrentSyncs bounds the streams whose first request (every
	// version the agent holds) is read and compared at once. 0 means 32.
	MaxConcurrentSyncs int
	// Limits bound what streams cost before they are bound to a node.
	Limits Limits
	// CatchUpTimeout bounds how long a stream waits for this replica to
	// reach the API revisions the agent already holds; then it ends with
	// Aborted, and the agent reconnects, perhaps to another replica.
	// 0 means 10 s.
	CatchUpTimeout time.Duration
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

	syncs     *semaphore.Weighted
	admission *admission

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
		opts.MaxResponseBytes = spokev1.DefaultResponseBytes
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxConcurrentSyncs == 0 {
		opts.MaxConcurrentSyncs = 32
	}
	if opts.CatchUpTimeout == 0 {
		opts.CatchUpTimeout = 10 * time.Second
	}
	return &Server{
		opts:      opts,
		admission: newAdmission(opts.Limits),
		syncs:     semaphore.NewWeighted(int64(opts.MaxConcurrentSyncs)),
		metrics:   newMetrics(opts.Registerer),
		log:       opts.Logger,
		conns:     make(map[string]*conn),
	}
}

// ServerOptions returns the gRPC server options the stream needs: the codec
// that sends pre-encoded responses; few streams per connection (an agent
// needs one); and connections that end after a while, with a grace period
// for the stream in progress, so that agents spread again over the
// replicas after a failover; and a small read buffer per connection (an
// agent sends acknowledgements of a few hundred bytes; gRPC's 32 KiB
// default held 125 of the control plane's 316 MB of heap with 5,000
// agents). Keepalive enforcement is internal/grpcserver's.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(newRawCodec()),
		grpc.MaxConcurrentStreams(maxStreamsPerConnection),
		grpc.ReadBufferSize(readBufferSize),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: keepaliveTime, Timeout: keepaliveTimeout,
			MaxConnectionAge: maxConnectionAge, MaxConnectionAgeGrace: maxConnectionAgeGrace,
		}),
	}
}

// Connection limits; keepalive times as internal/grpcserver sets them.
const (
	maxStreamsPerConnection = 16
	readBufferSize          = 4 << 10
	maxConnectionAge        = 30 * time.Minute
	maxConnectionAgeGrace   = time.Minute
	keepaliveTime           = 30 * time.Second
	keepaliveTimeout        = 10 * time.Second
)

// Register registers both services on g.
func (s *Server) Register(g *grpc.Server) {
	spokev1.RegisterViewServiceServer(g, s)
	spokev1.RegisterControlPlaneInspectionServiceServer(g, s)
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
