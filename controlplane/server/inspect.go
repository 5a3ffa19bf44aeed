package server

import (
	"context"
	"maps"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// ListNodes implements spokev1.ControlPlaneInspectionServiceServer. A
// node's acked versions are the versions of its view the agent has
// acknowledged: views that changed since then are pending and not listed.
func (s *Server) ListNodes(context.Context, *spokev1.ListNodesRequest) (*spokev1.ListNodesResponse, error) {
	s.mu.Lock()
	conns := slices.Collect(maps.Values(s.conns))
	s.mu.Unlock()
	slices.SortFunc(conns, func(a, b *conn) int {
		if a.node < b.node {
			return -1
		}
		if a.node > b.node {
			return 1
		}
		return 0
	})
	resp := &spokev1.ListNodesResponse{}
	for _, c := range conns {
		view := s.opts.Store.View(c.node)
		c.mu.Lock()
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
		c.mu.Unlock()
		resp.Nodes = append(resp.Nodes, st)
	}
	return resp, nil
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
