package server_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/spoke-proxy/spoke/controlplane/server"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// openIdle opens n streams that never send, spread over connections of at
// most perConn streams from the address ip.
func (f *fixture) openIdle(ctx context.Context, t *testing.T, ip string, n, perConn int) []grpc.BidiStreamingClient[spokev1.StreamViewsRequest, spokev1.StreamViewsResponse] {
	t.Helper()
	var out []grpc.BidiStreamingClient[spokev1.StreamViewsRequest, spokev1.StreamViewsResponse]
	var conn *grpc.ClientConn
	for i := range n {
		if i%perConn == 0 {
			conn = f.connFrom(t, ip)
		}
		s, err := spokev1.NewViewServiceClient(conn).StreamViews(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// syncTime is how long a well-behaved agent on its own address takes to
// receive its first response.
func (f *fixture) syncTime(ctx context.Context, t *testing.T, ip, node string) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	c := dialOn(ctx, t, f.connFrom(t, ip), node, nil)
	if got := names(c.recv()); len(got) != 1 {
		t.Fatalf("%s received %v", node, got)
	}
	return time.Since(start)
}

// ends returns how each stream ended.
func ends(streams []grpc.BidiStreamingClient[spokev1.StreamViewsRequest, spokev1.StreamViewsResponse]) map[codes.Code]int {
	out := map[codes.Code]int{}
	for _, s := range streams {
		_, err := s.Recv()
		out[status.Code(err)]++
	}
	return out
}

// Idle streams once held every sync slot: 40 streams that never send
// blocked every agent's initial sync.
func TestIdleStreamsDoNotBlockSync(t *testing.T) {
	f := start(t, server.Options{})
	ctx := testContext(t)
	f.set(t, svc("a", "one"))
	f.store.MarkReady()
	f.openIdle(ctx, t, "127.0.0.1", 40, 10)
	time.Sleep(100 * time.Millisecond) // let the server take them in
	d := f.syncTime(ctx, t, "127.0.0.2", "node-1")
	t.Logf("with 40 idle streams an agent synced in %s", d)
	if d > time.Second {
		t.Fatal("want within 1s")
	}
}

func TestThousandIdleConnectionsDoNotBlockSync(t *testing.T) {
	f := start(t, server.Options{})
	ctx := testContext(t)
	f.set(t, svc("a", "one"))
	f.store.MarkReady()
	for range 1000 {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	f.openIdle(ctx, t, "127.0.0.1", 1000, 10)
	time.Sleep(200 * time.Millisecond)
	d := f.syncTime(ctx, t, "127.0.0.2", "node-1")
	t.Logf("with 1,000 idle connections and 1,000 idle streams an agent synced in %s", d)
	if d > time.Second {
		t.Fatal("want within 1s")
	}
}

func TestFirstRequestDeadline(t *testing.T) {
	f := start(t, server.Options{Limits: server.Limits{FirstRequestTimeout: 200 * time.Millisecond}})
	ctx := testContext(t)
	f.store.MarkReady()
	idle := f.openIdle(ctx, t, "127.0.0.1", 1, 1)
	start := time.Now()
	_, err := idle[0].Recv()
	if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 2*time.Second {
		t.Fatalf("an idle stream got %v after %s, want DeadlineExceeded after 200ms", err, time.Since(start))
	}
}

func TestPendingStreamsPerPeerAreLimited(t *testing.T) {
	f := start(t, server.Options{Limits: server.Limits{MaxPendingPerPeer: 2, FirstRequestTimeout: time.Second}})
	ctx := testContext(t)
	f.set(t, svc("a", "one"))
	f.store.MarkReady()
	idle := f.openIdle(ctx, t, "127.0.0.1", 3, 3)
	time.Sleep(100 * time.Millisecond)
	f.syncTime(ctx, t, "127.0.0.2", "node-1")
	if got := ends(idle); got[codes.ResourceExhausted] != 1 || got[codes.DeadlineExceeded] != 2 {
		t.Fatalf("three pending streams of one peer, two allowed, ended %v", got)
	}
}

func TestNewStreamsAreRateLimited(t *testing.T) {
	f := start(t, server.Options{Limits: server.Limits{NewStreamsPerSecond: 0.01, NewStreamsBurst: 2, FirstRequestTimeout: 300 * time.Millisecond}})
	ctx := testContext(t)
	f.store.MarkReady()
	idle := f.openIdle(ctx, t, "127.0.0.1", 3, 3)
	if got := ends(idle); got[codes.ResourceExhausted] != 1 || got[codes.DeadlineExceeded] != 2 {
		t.Fatalf("three new streams, a burst of two allowed, ended %v", got)
	}
}

// bearerNode authenticates a stream whose bearer token is "node:NAME".
type bearerNode struct{}

func (bearerNode) NodeName(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if node, ok := strings.CutPrefix(v, "Bearer node:"); ok {
			return node, nil
		}
	}
	return "", server.ErrUnauthenticated
}

// A stream without credentials is refused before it sends anything, and
// takes no sync slot: with one slot, a refused stream does not delay a
// credited one.
func TestIdentityIsCheckedBeforeReading(t *testing.T) {
	f := start(t, server.Options{Authenticator: bearerNode{}, MaxConcurrentSyncs: 1})
	ctx := testContext(t)
	f.set(t, svc("a", "one"))
	f.store.MarkReady()
	anon := f.openIdle(ctx, t, "127.0.0.1", 5, 5)
	for _, s := range anon {
		if _, err := s.Recv(); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("a stream without credentials got %v, want Unauthenticated", err)
		}
	}
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer node:node-1")
	c := dialOn(authed, t, f.conn, "node-2", nil)
	if got := names(c.recv()); len(got) != 1 {
		t.Fatalf("node-1 received %v", got)
	}
	resp, err := spokev1.NewControlPlaneInspectionServiceClient(f.conn).ListNodes(ctx, &spokev1.ListNodesRequest{})
	if err != nil || len(resp.GetNodes()) != 1 || resp.GetNodes()[0].GetNodeName() != "node-1" {
		t.Fatalf("nodes %v, %v: want the stream bound to node-1, not the name it claimed", resp.GetNodes(), err)
	}
}
