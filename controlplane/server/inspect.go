package server

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// ErrPermissionDenied is wrapped by Inspector errors that refuse an
// authenticated caller.
var ErrPermissionDenied = errors.New("permission denied")

// Inspector authorizes ControlPlaneInspectionService calls.
type Inspector interface {
	// Authorize returns nil if the caller whose credentials are in ctx may
	// use verb ("get" or "list") on the view of node ("" for list). Its
	// errors wrap ErrUnauthenticated or ErrPermissionDenied when the caller
	// is refused; other errors are failures to decide.
	Authorize(ctx context.Context, verb, node string) error
}

// Page sizes of ListNodes.
const (
	DefaultNodesPage = 100
	MaxNodesPage     = 1000
)

// InspectionInterceptor refuses ControlPlaneInspectionService calls that
// in does not authorize, before their handler runs; other methods pass.
func InspectionInterceptor(in Inspector) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		var verb, node string
		switch info.FullMethod {
		case spokev1.ControlPlaneInspectionService_ListNodes_FullMethodName,
			spokev1.ControlPlaneInspectionService_ListHeldBack_FullMethodName:
			verb = "list"
		case spokev1.ControlPlaneInspectionService_GetNodeView_FullMethodName:
			verb, node = "get", req.(*spokev1.GetNodeViewRequest).GetNodeName()
			if node == "" {
				return nil, status.Error(codes.InvalidArgument, "node_name is required")
			}
		default:
			return handler(ctx, req)
		}
		if err := in.Authorize(ctx, verb, node); err != nil {
			return nil, inspectionStatus(err)
		}
		return handler(ctx, req)
	}
}

func inspectionStatus(err error) error {
	switch {
	case errors.Is(err, ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, ErrPermissionDenied):
		return status.Error(codes.PermissionDenied, err.Error())
	default:
		return status.Errorf(codes.Unavailable, "checking the caller: %v", err)
	}
}

// ListNodes implements spokev1.ControlPlaneInspectionServiceServer. A
// node's acked versions are the versions of its view the agent has
// acknowledged: views that changed since then are pending and not listed.
// Nodes come by name, one page at a time; the page token is the last name
// of the previous page.
func (s *Server) ListNodes(_ context.Context, req *spokev1.ListNodesRequest) (*spokev1.ListNodesResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, status.Error(codes.InvalidArgument, "page_size must not be negative")
	case size == 0:
		size = DefaultNodesPage
	case size > MaxNodesPage:
		size = MaxNodesPage
	}
	conns := s.connsAfter(req.GetPageToken())
	resp := &spokev1.ListNodesResponse{}
	if len(conns) > size {
		conns = conns[:size]
		resp.NextPageToken = conns[size-1].node
	}
	for _, c := range conns {
		resp.Nodes = append(resp.Nodes, s.nodeStatus(c))
	}
	return resp, nil
}

// connsAfter returns the streams of the nodes named after node, by name.
func (s *Server) connsAfter(node string) []*conn {
	s.mu.Lock()
	conns := slices.Collect(maps.Values(s.conns))
	s.mu.Unlock()
	conns = slices.DeleteFunc(conns, func(c *conn) bool { return c.node <= node })
	slices.SortFunc(conns, func(a, b *conn) int { return strings.Compare(a.node, b.node) })
	return conns
}

func (s *Server) nodeStatus(c *conn) *spokev1.NodeStatus {
	view := s.opts.Store.View(c.node)
	c.mu.Lock()
	defer c.mu.Unlock()
	st := &spokev1.NodeStatus{
		NodeName:      c.node,
		Connected:     true,
		Peer:          c.peer,
		ConnectedAt:   timestamppb.New(c.connectedAt),
		ResourcesSent: c.resourcesSent,
		ResponsesSent: c.responsesSent,
		PendingNonce:  c.inFlight,
		AckedVersions: map[string]string{},
		Nacked:        slices.Clone(c.nacks),
	}
	for _, e := range view {
		if _, rejected := c.skip[e.Name]; e.Rev <= c.synced && !rejected {
			st.AckedVersions[e.Name] = e.Version
		}
	}
	return st
}

// GetNodeView implements spokev1.ControlPlaneInspectionServiceServer.
func (s *Server) GetNodeView(_ context.Context, req *spokev1.GetNodeViewRequest) (*spokev1.GetNodeViewResponse, error) {
	if req.GetNodeName() == "" {
		return nil, status.Error(codes.InvalidArgument, "node_name is required")
	}
	resp := &spokev1.GetNodeViewResponse{}
	for _, e := range s.opts.Store.View(req.GetNodeName()) {
		resp.Resources = append(resp.Resources, e.Resource)
	}
	return resp, nil
}

// ListHeldBack implements spokev1.ControlPlaneInspectionServiceServer.
func (s *Server) ListHeldBack(context.Context, *spokev1.ListHeldBackRequest) (*spokev1.ListHeldBackResponse, error) {
	resp := &spokev1.ListHeldBackResponse{}
	for _, r := range s.opts.Store.Rejected() {
		resp.Services = append(resp.Services, &spokev1.HeldBackService{Name: r.Name, ViewBytes: uint64(r.Bytes), LimitBytes: uint64(r.Limit)})
	}
	return resp, nil
}
