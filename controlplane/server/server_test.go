package server_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/server"
	"github.com/spoke-proxy/spoke/controlplane/store"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixture struct {
	store  *store.Store
	server *server.Server
	conn   *grpc.ClientConn
	addr   string
}

func start(t *testing.T, opts server.Options) *fixture {
	t.Helper()
	if opts.Store == nil {
		opts.Store = store.New()
	}
	f := &fixture{store: opts.Store}
	f.server = server.New(opts)
	g := grpc.NewServer(server.ServerOptions()...)
	f.server.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	f.addr = lis.Addr().String()
	f.conn = f.connFrom(t, "127.0.0.1")
	return f
}

// connFrom returns a connection to the server from the local address ip
// (any of 127.0.0.0/8), which the server sees as the peer's address.
func (f *fixture) connFrom(t *testing.T, ip string) *grpc.ClientConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func svc(ns, name string, endpoints ...string) *spokev1.Service {
	s := &spokev1.Service{Namespace: ns, Name: name, ClusterIps: []string{"10.96.0.1"}}
	p := &spokev1.ServicePort{Name: "http", Protocol: spokev1.Protocol_PROTOCOL_TCP, Port: 80,
		Internal: &spokev1.Backends{NoEndpoints: spokev1.NoEndpoints_NO_ENDPOINTS_REJECT}}
	for _, ep := range endpoints {
		p.Internal.Endpoints = append(p.Internal.Endpoints, &spokev1.Endpoint{Ip: ep, Port: 8080})
	}
	s.Ports = append(s.Ports, p)
	return s
}

func (f *fixture) set(t *testing.T, services ...*spokev1.Service) {
	t.Helper()
	b := store.Batch{Services: map[string]*model.Views{}}
	for _, s := range services {
		b.Services[s.Namespace+"/"+s.Name] = &model.Views{Default: s}
	}
	if _, err := f.store.Apply(b); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) remove(t *testing.T, names ...string) {
	t.Helper()
	b := store.Batch{Services: map[string]*model.Views{}}
	for _, n := range names {
		b.Services[n] = nil
	}
	if _, err := f.store.Apply(b); err != nil {
		t.Fatal(err)
	}
}

// client is a raw stream that checks the protocol's invariants on every
// response: nonces are new and increasing, versions match content, no name
// is both sent and removed, no resource twice.
type client struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[spokev1.StreamViewsRequest, spokev1.StreamViewsResponse]
	nonces map[string]bool
	last   int
	held   map[string]string
}

func (f *fixture) dial(ctx context.Context, t *testing.T, node string, held map[string]string) *client {
	t.Helper()
	return dialOn(ctx, t, f.conn, node, held)
}

func dialOn(ctx context.Context, t *testing.T, conn *grpc.ClientConn, node string, held map[string]string) *client {
	t.Helper()
	s, err := spokev1.NewViewServiceClient(conn).StreamViews(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&spokev1.StreamViewsRequest{NodeName: node, InitialResourceVersions: held}); err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, stream: s, nonces: map[string]bool{}, held: map[string]string{}}
	for k, v := range held {
		c.held[k] = v
	}
	return c
}

func (c *client) recv() *spokev1.StreamViewsResponse {
	c.t.Helper()
	resp, err := c.stream.Recv()
	if err != nil {
		c.t.Fatalf("receiving: %v", err)
	}
	var n int
	if _, err := fmt.Sscan(resp.GetNonce(), &n); err != nil || c.nonces[resp.GetNonce()] || n <= c.last {
		c.t.Fatalf("nonce %q does not advance (last %d)", resp.GetNonce(), c.last)
	}
	c.nonces[resp.GetNonce()], c.last = true, n
	seen := map[string]bool{}
	for _, r := range resp.GetResources() {
		v, err := spokev1.ContentVersion(r)
		if err != nil || v != r.GetVersion() {
			c.t.Fatalf("resource %s: version %q does not match content (%q, %v)", r.GetName(), r.GetVersion(), v, err)
		}
		if seen[r.GetName()] {
			c.t.Fatalf("resource %s twice in one response", r.GetName())
		}
		if c.held[r.GetName()] == r.GetVersion() {
			c.t.Fatalf("resource %s resent at version %s the agent holds", r.GetName(), r.GetVersion())
		}
		seen[r.GetName()] = true
	}
	for _, name := range resp.GetRemovedResources() {
		if seen[name] {
			c.t.Fatalf("resource %s both sent and removed", name)
		}
	}
	return resp
}

func (c *client) ack(resp *spokev1.StreamViewsResponse) {
	c.t.Helper()
	for _, r := range resp.GetResources() {
		c.held[r.GetName()] = r.GetVersion()
	}
	for _, n := range resp.GetRemovedResources() {
		delete(c.held, n)
	}
	if err := c.stream.Send(&spokev1.StreamViewsRequest{ResponseNonce: resp.GetNonce()}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) nack(resp *spokev1.StreamViewsResponse, names ...string) {
	c.t.Helper()
	err := c.stream.Send(&spokev1.StreamViewsRequest{ResponseNonce: resp.GetNonce(),
		Error: &spokev1.Rejection{Message: "rejected by test", ResourceNames: names}})
	if err != nil {
		c.t.Fatal(err)
	}
}

// recvNames receives a response and fails the test, naming the response
// by what, unless it carries exactly the resources want lists, as in
// "[a/one a/two]".
func (c *client) recvNames(want, what string) *spokev1.StreamViewsResponse {
	c.t.Helper()
	resp := c.recv()
	if got := names(resp); fmt.Sprint(got) != want {
		c.t.Fatalf("%s carries %v, want %s", what, got, want)
	}
	return resp
}

func names(resp *spokev1.StreamViewsResponse) []string {
	var out []string
	for _, r := range resp.GetResources() {
		out = append(out, r.GetName())
	}
	return out
}

// serving starts a server whose store holds services and is ready.
func serving(t *testing.T, services ...*spokev1.Service) (*fixture, context.Context) {
	t.Helper()
	f := start(t, server.Options{})
	f.set(t, services...)
	f.store.MarkReady()
	return f, testContext(t)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestInitialSyncThenDeltas(t *testing.T) {
	f, ctx := serving(t, svc("a", "one", "10.0.0.1"), svc("a", "two", "10.0.0.2"))

	c := f.dial(ctx, t, "node-1", nil)
	resp := c.recvNames("[a/one a/two]", "initial response")
	c.ack(resp)

	f.set(t, svc("a", "two", "10.0.0.2", "10.0.0.3"), svc("a", "three"))
	resp = c.recvNames("[a/three a/two]", "delta (only the changed services)")
	c.ack(resp)

	f.remove(t, "a/one")
	resp = c.recv()
	if len(resp.GetResources()) != 0 || fmt.Sprint(resp.GetRemovedResources()) != "[a/one]" {
		t.Fatalf("removal response: resources %v, removed %v", names(resp), resp.GetRemovedResources())
	}
	c.ack(resp)

	// An identical update changes nothing and sends nothing: the next
	// response carries only the next real change.
	f.set(t, svc("a", "three"))
	f.set(t, svc("a", "four"))
	c.recvNames("[a/four]", "after a no-op update the delta")
}

func TestReconnectWithCurrentVersionsReceivesNothing(t *testing.T) {
	f, ctx := serving(t, svc("a", "one", "10.0.0.1"), svc("a", "two", "10.0.0.2"))
	c := f.dial(ctx, t, "node-1", nil)
	resp := c.recv()
	c.ack(resp)

	c2 := f.dial(ctx, t, "node-1", c.held)
	resp = c2.recv()
	if len(resp.GetResources()) != 0 || len(resp.GetRemovedResources()) != 0 {
		t.Fatalf("reconnect with current versions received %v and removals %v", names(resp), resp.GetRemovedResources())
	}
	// A held resource the control plane no longer has is removed; a stale
	// version is replaced.
	held := map[string]string{"a/one": "stale", "a/gone": "x"}
	c3 := f.dial(ctx, t, "node-1", held)
	resp = c3.recv()
	if fmt.Sprint(names(resp)) != "[a/one a/two]" || fmt.Sprint(resp.GetRemovedResources()) != "[a/gone]" {
		t.Fatalf("resume: sent %v removed %v", names(resp), resp.GetRemovedResources())
	}
}

// TestReconnectWithDigest: an agent that sends the digest of what it holds
// is sent nothing when it holds its view, and otherwise is asked for its
// versions and sent what differs; the control plane announces that it
// reads digests in its response header.
func TestReconnectWithDigest(t *testing.T) {
	f, ctx := serving(t, svc("a", "one", "10.0.0.1"), svc("a", "two", "10.0.0.2"))
	c := f.dial(ctx, t, "node-1", nil)
	c.ack(c.recv())

	open := func(digest []byte) grpc.BidiStreamingClient[spokev1.StreamViewsRequest, spokev1.StreamViewsResponse] {
		t.Helper()
		s, err := spokev1.NewViewServiceClient(f.conn).StreamViews(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&spokev1.StreamViewsRequest{NodeName: "node-1", InitialVersionsDigest: digest}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	recv := func(s grpc.BidiStreamingClient[spokev1.StreamViewsRequest, spokev1.StreamViewsResponse]) *spokev1.StreamViewsResponse {
		t.Helper()
		resp, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	s := open(spokev1.VersionsDigest(c.held))
	resp := recv(s)
	if resp.GetNonce() == "" || resp.GetSendInitialVersions() || len(resp.GetResources())+len(resp.GetRemovedResources()) > 0 {
		t.Fatalf("holding its view, the digest's answer: %v", resp)
	}
	md, err := s.Header()
	if err != nil || fmt.Sprint(md.Get(spokev1.VersionsDigestHeader)) != "["+spokev1.VersionsDigestScheme+"]" {
		t.Fatalf("response header %v (%v), want %s: %s", md, err, spokev1.VersionsDigestHeader, spokev1.VersionsDigestScheme)
	}

	// While the agent was away a service changed and one was removed.
	held := c.held
	f.set(t, svc("a", "two", "10.0.0.2", "10.0.0.3"))
	f.remove(t, "a/one")
	s = open(spokev1.VersionsDigest(held))
	if resp := recv(s); !resp.GetSendInitialVersions() || resp.GetNonce() != "" || len(resp.GetResources()) > 0 {
		t.Fatalf("holding an old view, the digest's answer: %v, want send_initial_versions alone", resp)
	}
	if err := s.Send(&spokev1.StreamViewsRequest{InitialResourceVersions: held}); err != nil {
		t.Fatal(err)
	}
	resp = recv(s)
	if fmt.Sprint(names(resp)) != "[a/two]" || fmt.Sprint(resp.GetRemovedResources()) != "[a/one]" || resp.GetNonce() == "" {
		t.Fatalf("after sending its versions: sent %v, removed %v, nonce %q; want [a/two], [a/one]", names(resp), resp.GetRemovedResources(), resp.GetNonce())
	}
}

func TestNackedVersionIsNotResent(t *testing.T) {
	f, ctx := serving(t, svc("a", "one", "10.0.0.1"))
	c := f.dial(ctx, t, "node-1", nil)
	c.ack(c.recv())

	f.set(t, svc("a", "one", "10.0.0.9"), svc("a", "two"))
	resp := c.recv()
	c.nack(resp, "a/one")
	c.held["a/two"] = resp.GetResources()[1].GetVersion()

	// The rejection is visible through inspection.
	var st *spokev1.NodeStatus
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		nodes, err := f.server.ListNodes(ctx, &spokev1.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes.GetNodes()) == 1 && len(nodes.GetNodes()[0].GetNacked()) == 1 {
			st = nodes.GetNodes()[0]
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st == nil {
		t.Fatal("the NACK never showed in ListNodes")
	}
	if _, ok := st.GetNacked()[0].GetVersions()["a/one"]; !ok || st.GetNacked()[0].GetMessage() != "rejected by test" {
		t.Fatalf("nack status %v", st.GetNacked()[0])
	}
	if _, ok := st.GetAckedVersions()["a/one"]; ok {
		t.Fatal("a rejected version is listed as acked")
	}
	if _, ok := st.GetAckedVersions()["a/two"]; !ok {
		t.Fatal("the accepted resource of the rejected response is not listed as acked")
	}

	// Another change goes out without the rejected version.
	f.set(t, svc("a", "three"))
	resp = c.recvNames("[a/three]", "after a NACK the next response (the rejected version must not be resent)")
	c.ack(resp)
	// A new version of the rejected service is sent.
	f.set(t, svc("a", "one", "10.0.0.10"))
	c.recvNames("[a/one]", "the response to a new version of the rejected service")
}

func TestUnacknowledgedStreamIsDisconnected(t *testing.T) {
	f := start(t, server.Options{AckTimeout: 200 * time.Millisecond})
	ctx := testContext(t)
	f.set(t, svc("a", "one"))
	f.store.MarkReady()
	c := f.dial(ctx, t, "node-1", nil)
	c.recv()
	_, err := c.stream.Recv()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a stuck agent got %v, want DeadlineExceeded", err)
	}
}

func TestHostileRequests(t *testing.T) {
	f, ctx := serving(t, svc("a", "one"))

	cases := []struct {
		name  string
		first *spokev1.StreamViewsRequest
		then  func(resp *spokev1.StreamViewsResponse) *spokev1.StreamViewsRequest
	}{
		{name: "first request acks", first: &spokev1.StreamViewsRequest{NodeName: "n", ResponseNonce: "1"}},
		{name: "huge node name", first: &spokev1.StreamViewsRequest{NodeName: string(make([]byte, 1000))}},
		{name: "bad held version", first: &spokev1.StreamViewsRequest{NodeName: "n", InitialResourceVersions: map[string]string{"a/one": string(make([]byte, 200))}}},
		{name: "unknown nonce", first: &spokev1.StreamViewsRequest{NodeName: "n"},
			then: func(*spokev1.StreamViewsResponse) *spokev1.StreamViewsRequest {
				return &spokev1.StreamViewsRequest{ResponseNonce: "999"}
			}},
		{name: "empty ack", first: &spokev1.StreamViewsRequest{NodeName: "n"},
			then: func(*spokev1.StreamViewsResponse) *spokev1.StreamViewsRequest { return &spokev1.StreamViewsRequest{} }},
		{name: "short digest", first: &spokev1.StreamViewsRequest{NodeName: "n", InitialVersionsDigest: make([]byte, 8)}},
		{name: "digest and versions", first: &spokev1.StreamViewsRequest{NodeName: "n", InitialVersionsDigest: make([]byte, spokev1.VersionsDigestSize),
			InitialResourceVersions: map[string]string{"a/one": "v"}}},
		{name: "digest answered with a digest", first: &spokev1.StreamViewsRequest{NodeName: "n", InitialVersionsDigest: make([]byte, spokev1.VersionsDigestSize)},
			then: func(*spokev1.StreamViewsResponse) *spokev1.StreamViewsRequest {
				return &spokev1.StreamViewsRequest{InitialVersionsDigest: make([]byte, spokev1.VersionsDigestSize)}
			}},
		{name: "digest answered with an ack", first: &spokev1.StreamViewsRequest{NodeName: "n", InitialVersionsDigest: make([]byte, spokev1.VersionsDigestSize)},
			then: func(*spokev1.StreamViewsResponse) *spokev1.StreamViewsRequest {
				return &spokev1.StreamViewsRequest{ResponseNonce: "1"}
			}},
		{name: "digest after first", first: &spokev1.StreamViewsRequest{NodeName: "n"},
			then: func(r *spokev1.StreamViewsResponse) *spokev1.StreamViewsRequest {
				return &spokev1.StreamViewsRequest{ResponseNonce: r.GetNonce(), InitialVersionsDigest: make([]byte, spokev1.VersionsDigestSize)}
			}},
		{name: "versions after first", first: &spokev1.StreamViewsRequest{NodeName: "n"},
			then: func(r *spokev1.StreamViewsResponse) *spokev1.StreamViewsRequest {
				return &spokev1.StreamViewsRequest{ResponseNonce: r.GetNonce(), InitialResourceVersions: map[string]string{"x": "y"}}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := spokev1.NewViewServiceClient(f.conn).StreamViews(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(tc.first); err != nil {
				t.Fatal(err)
			}
			if tc.then != nil {
				resp, err := s.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Send(tc.then(resp)); err != nil {
					t.Fatal(err)
				}
			}
			_, err = s.Recv()
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
		})
	}
	// The server still serves well-behaved agents.
	c := f.dial(ctx, t, "node-ok", nil)
	c.recvNames("[a/one]", "after hostile streams a good agent's response")
}

func TestLargeViewIsSplit(t *testing.T) {
	const limit = 8 << 10
	f := start(t, server.Options{MaxResponseBytes: limit})
	ctx := testContext(t)
	var all []*spokev1.Service
	for i := range 200 {
		all = append(all, svc("big", fmt.Sprintf("svc-%03d", i), "10.0.0.1", "10.0.0.2", "10.0.0.3"))
	}
	f.set(t, all...)
	f.store.MarkReady()
	c := f.dial(ctx, t, "node-1", nil)
	got := map[string]bool{}
	responses := 0
	for len(got) < len(all) {
		resp := c.recv()
		responses++
		if size := proto.Size(resp); size > limit {
			t.Fatalf("response of %d bytes exceeds the %d limit", size, limit)
		}
		for _, n := range names(resp) {
			got[n] = true
		}
		c.ack(resp)
	}
	if responses < 2 {
		t.Fatalf("a view larger than the limit came in %d response", responses)
	}
}

// TestOversizedViewIsHeldBack runs an agent whose receive limit is small
// against a store whose view limit is derived from it the way
// spokev1.MaxViewBytes is from spokev1.MaxMessageBytes: the oversized
// service never reaches the agent, which keeps receiving every other
// update, and gets it once it shrinks.
func TestOversizedViewIsHeldBack(t *testing.T) {
	const recvLimit = 4 << 10
	f := start(t, server.Options{Store: store.NewWithOptions(store.Options{MaxViewBytes: recvLimit - spokev1.ResponseOverheadBytes})})
	ctx := testContext(t)
	huge := make([]string, 1000)
	for i := range huge {
		huge[i] = fmt.Sprintf("10.1.%d.%d", i/256, i%256)
	}
	f.set(t, svc("a", "small", "10.0.0.1"), svc("a", "huge", huge...))
	f.store.MarkReady()
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(recvLimit)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	c := dialOn(ctx, t, conn, "node-1", nil)
	resp := c.recvNames("[a/small]", "initial response (without the oversized a/huge)")
	c.ack(resp)
	held, err := spokev1.NewControlPlaneInspectionServiceClient(f.conn).ListHeldBack(ctx, &spokev1.ListHeldBackRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if hs := held.GetServices(); len(hs) != 1 || hs[0].GetName() != "a/huge" || hs[0].GetViewBytes() <= hs[0].GetLimitBytes() {
		t.Errorf("held back: %v, want a/huge above its limit", hs)
	}
	f.set(t, svc("a", "other", "10.0.0.2"), svc("a", "huge", append(huge, "10.2.0.1")...))
	resp = c.recvNames("[a/other]", "delta")
	c.ack(resp)
	f.set(t, svc("a", "huge", "10.0.0.3"))
	resp = c.recvNames("[a/huge]", "after a/huge shrank the delta")
	c.ack(resp)
	if held, err := spokev1.NewControlPlaneInspectionServiceClient(f.conn).ListHeldBack(ctx, &spokev1.ListHeldBackRequest{}); err != nil || len(held.GetServices()) != 0 {
		t.Errorf("held back after a/huge shrank: %v, %v", held.GetServices(), err)
	}
}

func TestSlowAgentDoesNotDelayOthers(t *testing.T) {
	f, ctx := serving(t, svc("a", "one"))
	slow := f.dial(ctx, t, "slow", nil)
	slow.recv() // never acknowledged
	fast := f.dial(ctx, t, "fast", nil)
	fast.ack(fast.recv())
	for i := range 20 {
		f.set(t, svc("a", "one", fmt.Sprintf("10.0.1.%d", i+1)))
		resp := fast.recvNames("[a/one]", fmt.Sprintf("update %d: the fast agent's response", i))
		fast.ack(resp)
	}
}

// TestLaggingReplicaDoesNotRollBack: an agent that held the views of a
// replica further along the API than this one (it failed over) gets
// nothing until this replica has caught up, then views at least as new;
// a replica that does not catch up in time refuses the stream.
func TestLaggingReplicaDoesNotRollBack(t *testing.T) {
	f := start(t, server.Options{CatchUpTimeout: 5 * time.Second})
	ctx := testContext(t)
	apply := func(rev *spokev1.ApiRevisions, services ...*spokev1.Service) {
		t.Helper()
		b := store.Batch{Services: map[string]*model.Views{}, APIRevisions: rev}
		for _, s := range services {
			b.Services[s.Namespace+"/"+s.Name] = &model.Views{Default: s}
		}
		if _, err := f.store.Apply(b); err != nil {
			t.Fatal(err)
		}
	}
	apply(&spokev1.ApiRevisions{Services: 100, EndpointSlices: 100, Nodes: 50}, svc("a", "web", "10.0.0.1"))
	f.store.MarkReady()

	// The agent applied web with endpoint 10.0.0.2 from a replica at
	// slices revision 120.
	newer := svc("a", "web", "10.0.0.2")
	version, err := spokev1.ContentVersion(&spokev1.Resource{Name: "a/web", Kind: &spokev1.Resource_Service{Service: newer}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := spokev1.NewViewServiceClient(f.conn).StreamViews(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Send(&spokev1.StreamViewsRequest{NodeName: "node-1", InitialResourceVersions: map[string]string{"a/web": version},
		InitialApiRevisions: &spokev1.ApiRevisions{Services: 100, EndpointSlices: 120, Nodes: 50}})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *spokev1.StreamViewsResponse, 1)
	go func() {
		resp, err := s.Recv()
		if err != nil {
			t.Error(err)
		}
		got <- resp
	}()
	select {
	case resp := <-got:
		t.Fatalf("a replica behind the agent answered %v: the agent would be rolled back to 10.0.0.1", resp)
	case <-time.After(300 * time.Millisecond):
	}
	apply(&spokev1.ApiRevisions{Services: 100, EndpointSlices: 120, Nodes: 50}, newer)
	resp := <-got
	if len(resp.GetResources()) != 0 || len(resp.GetRemovedResources()) != 0 {
		t.Errorf("caught up, the replica sent %v removed %v; the agent already holds this state", names(resp), resp.GetRemovedResources())
	}
	if r := resp.GetApiRevisions(); r.GetEndpointSlices() != 120 || r.GetServices() != 100 || r.GetNodes() != 50 {
		t.Errorf("response revisions %v", r)
	}

	// A replica that never catches up refuses the stream.
	slow := start(t, server.Options{Store: f.store, CatchUpTimeout: 100 * time.Millisecond})
	s2, err := spokev1.NewViewServiceClient(slow.conn).StreamViews(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Send(&spokev1.StreamViewsRequest{NodeName: "node-2", InitialApiRevisions: &spokev1.ApiRevisions{Nodes: 51}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Recv(); status.Code(err) != codes.Aborted {
		t.Errorf("stream to a replica that stayed behind: %v, want Aborted", err)
	}
}
