package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/health" // the client side of healthCheckConfig
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/nodeagent/view"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Register registers the inspection service on g.
func (a *Agent) Register(g *grpc.Server) {
	spokev1.RegisterAgentInspectionServiceServer(g, a)
}

// HealthzHandler answers as kube-proxy's /healthz does: the time the
// datapath was last programmed or verified and the current time, with 200
// while the agent is Healthy and 503 otherwise.
func (a *Agent) HealthzHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		healthy, last := a.health(time.Now())
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		json.NewEncoder(w).Encode(struct {
			LastUpdated time.Time `json:"lastUpdated"`
			CurrentTime time.Time `json:"currentTime"`
		}{last, time.Now()})
	})
}

// Healthy reports whether the datapath holds the agent's state and, when
// the drift check runs, was programmed or verified within two of its
// intervals (kube-proxy's bound: twice its sync period). A lost control
// plane alone does not make an agent unhealthy: it keeps forwarding.
func (a *Agent) Healthy() bool {
	healthy, _ := a.health(time.Now())
	return healthy
}

func (a *Agent) health(now time.Time) (healthy bool, lastUpdated time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	healthy = a.restored
	if bound := 2 * a.opts.RepairInterval; bound > 0 && now.Sub(a.updatedAt) > bound {
		healthy = false
	}
	return healthy, a.updatedAt
}

func (a *Agent) markUpdated() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.updatedAt = time.Now()
}

// ReconnectBackoff is how the agent's connection retries a control plane
// that is away. Its longest wait, with jitter, is 3 s: an agent whose
// control plane was down for minutes tries again within 3 s of its return
// and holds its view within the 5 s the project promises. (A 5 s ceiling
// made that 6 s.) The jitter spreads a fleet's returns; the control plane
// rate-limits new streams besides.
var ReconnectBackoff = backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2500 * time.Millisecond}

// DefaultKeepalive is how an agent finds a control plane that stopped
// answering without closing the connection (a partition, a host that
// froze): after Time without hearing from it the agent pings, and Timeout
// later without an answer it drops the connection and reconnects. A
// partition is noticed within Time+Timeout.
var DefaultKeepalive = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}

// MinKeepaliveTime is the shortest keepalive Time the control plane
// permits (internal/grpcserver's enforcement policy); a client that pings
// more often is sent GOAWAY (too_many_pings). gRPC raises a shorter Time
// to this as well.
const MinKeepaliveTime = 10 * time.Second

// serviceConfig spreads an agent's connection over every address its
// control-plane name resolves to (one per replica) and health-checks the
// view service on each: a stream opens only on a replica whose view
// service is SERVING, which a replica that is not ready (a stalled watch,
// an API server it cannot reach) is not. When the replica serving the
// stream dies, the next stream goes at once to another, already connected.
// A name with one address (a load balancer) works as before.
const serviceConfig = `{
	"loadBalancingConfig": [{"round_robin": {}}],
	"healthCheckConfig": {"serviceName": "spoke.v1.ViewService"}
}`

// DialOptions are the gRPC options an agent's control-plane connection
// needs: a receive limit above the largest response, DefaultKeepalive, a
// reconnect backoff short enough that agents return within seconds of a
// control-plane restart, jittered so they do not return all at once, and
// serviceConfig.
func DialOptions() []grpc.DialOption { return DialOptionsWith(DefaultKeepalive) }

// DialOptionsWith is DialOptions with the keepalive ka.
func DialOptionsWith(ka keepalive.ClientParameters) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(spokev1.MaxMessageBytes)),
		grpc.WithKeepaliveParams(ka),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           ReconnectBackoff,
			MinConnectTimeout: 5 * time.Second,
		}),
	}
}

// Close closes the state file of an agent that was restored but not run.
func (a *Agent) Close() { a.closeState() }

// Tracer is implemented by datapaths that can say where a packet goes
// without sending it.
type Tracer interface {
	Trace(datapath.Origin, datapath.Packet) datapath.Verdict
}

// TracePacket implements spokev1.AgentInspectionServiceServer.
func (a *Agent) TracePacket(_ context.Context, req *spokev1.TracePacketRequest) (*spokev1.TracePacketResponse, error) {
	tr, ok := a.opts.Datapath.(Tracer)
	if !ok {
		return nil, status.Errorf(codes.Unimplemented, "the %s datapath cannot trace packets", a.opts.Datapath.Name())
	}
	var pkt datapath.Packet
	if pkt.Protocol, ok = view.Protocol(req.GetProtocol()); !ok {
		return nil, status.Error(codes.InvalidArgument, "protocol must be TCP, UDP or SCTP")
	}
	var err error
	if pkt.Src, err = netip.ParseAddrPort(req.GetSource()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "source: %v", err)
	}
	if pkt.Dst, err = netip.ParseAddrPort(req.GetDestination()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "destination: %v", err)
	}
	origin := datapath.FromNode
	if req.GetFromOutside() {
		origin = datapath.FromOutside
	}
	v := tr.Trace(origin, pkt)
	resp := &spokev1.TracePacketResponse{Action: v.Action.String(), Service: v.Service}
	if v.Action == datapath.Forward {
		resp.Backend = v.Backend.String()
	}
	return resp, nil
}
