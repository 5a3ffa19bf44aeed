package server_test

import (
	"fmt"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spoke-proxy/spoke/controlplane/server"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

func TestListNodesPagesThroughEveryNode(t *testing.T) {
	f := start(t, server.Options{})
	ctx := testContext(t)
	f.set(t, svc("a", "one"))
	f.store.MarkReady()
	var want []string
	for i := range 7 {
		node := fmt.Sprintf("node-%d", i)
		want = append(want, node)
		f.dial(ctx, t, node, nil).recv()
	}
	inspect := spokev1.NewControlPlaneInspectionServiceClient(f.conn)
	var got []string
	pages := 0
	req := &spokev1.ListNodesRequest{PageSize: 3}
	for {
		resp, err := inspect.ListNodes(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(resp.GetNodes()) > 3 {
			t.Fatalf("page %d has %d nodes, more than the 3 asked for", pages, len(resp.GetNodes()))
		}
		for _, n := range resp.GetNodes() {
			got = append(got, n.GetNodeName())
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	if !slices.Equal(got, want) || pages != 3 {
		t.Fatalf("%d pages listed %v, want 3 pages listing %v", pages, got, want)
	}

	all, err := inspect.ListNodes(ctx, &spokev1.ListNodesRequest{PageSize: server.MaxNodesPage + 1})
	if err != nil || len(all.GetNodes()) != 7 || all.GetNextPageToken() != "" {
		t.Fatalf("an oversized page: %d nodes, next %q, %v; want all 7 on one page", len(all.GetNodes()), all.GetNextPageToken(), err)
	}
	if _, err := inspect.ListNodes(ctx, &spokev1.ListNodesRequest{PageSize: -1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a negative page size: %v, want InvalidArgument", err)
	}
}
