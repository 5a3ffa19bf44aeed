// Package grpcserver builds the gRPC servers of Spoke's binaries: server
// reflection and the standard health service on every one (so grpcurl works
// with no proto files at hand), Prometheus metrics through go-grpc-middleware
// with the metric names of go-grpc-prometheus, and keepalives that find dead
// peers.
package grpcserver

import (
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
)

// Server is a gRPC server with its health service.
type Server struct {
	*grpc.Server
	Health  *health.Server
	metrics *grpcprom.ServerMetrics
}

// New returns a server whose metrics are registered with reg (none when
// reg is nil). Register services on it, then call Ready.
func New(reg prometheus.Registerer, opts ...grpc.ServerOption) *Server {
	s := &Server{Health: health.NewServer()}
	base := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if reg != nil {
		s.metrics = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
		reg.MustRegister(s.metrics)
		base = append(base,
			grpc.ChainUnaryInterceptor(s.metrics.UnaryServerInterceptor()),
			grpc.ChainStreamInterceptor(s.metrics.StreamServerInterceptor()))
	}
	s.Server = grpc.NewServer(append(base, opts...)...)
	healthpb.RegisterHealthServer(s.Server, s.Health)
	reflection.Register(s.Server)
	return s
}

// Ready initialises the per-method metrics and marks every registered
// service as serving.
func (s *Server) Ready() {
	if s.metrics != nil {
		s.metrics.InitializeMetrics(s.Server)
	}
	for name := range s.GetServiceInfo() {
		s.Health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	s.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
}
