package agent_test

import (
	"path/filepath"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/wait"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

const initialRequests = "spoke_controlplane_initial_requests_total"

// TestReconnectSendsDigest: an agent that reconnects to a control plane
// that reads digests sends the digest of what it holds; holding its view it
// is sent nothing, and when its view changed meanwhile it sends its
// versions when asked and gets exactly the change and the removal.
func TestReconnectSendsDigest(t *testing.T) {
	web, api := svc("web", "10.96.0.10", "10.244.1.5"), svc("api", "10.96.0.11", "10.244.2.5")
	cp, dp, a := syncedWith(t, web, api)
	if n := counter(t, cp, initialRequests, "held", "versions"); n != 1 {
		t.Fatalf("first stream: %v first requests with versions, want 1 (an agent that never heard of digests sends versions)", n)
	}
	received := state(t, a).GetResourcesReceived()

	// The same view: the digest matches, nothing is sent.
	cp.grpc.Stop()
	cp2 := startControlPlane(t, cp.addr, newStore(t, web, api))
	synced(t, cp2, a)
	if n := counter(t, cp2, initialRequests, "held", "digest_matched"); n != 1 {
		t.Fatalf("reconnecting with its view held: %v digests matched, want 1", n)
	}
	if got := state(t, a).GetResourcesReceived() - received; got != 0 {
		t.Fatalf("holding its view, the agent received %d resources", got)
	}

	// While the agent was away, web's endpoint changed and api went.
	cp2.grpc.Stop()
	cp3 := startControlPlane(t, cp.addr, newStore(t, svc("web", "10.96.0.10", "10.244.1.6")))
	synced(t, cp3, a)
	if n := counter(t, cp3, initialRequests, "held", "digest_differed"); n != 1 {
		t.Fatalf("reconnecting with an old view: %v digests that differed, want 1", n)
	}
	if v := trace(dp, "10.96.0.10:80"); v.Backend.String() != "10.244.1.6:8080" {
		t.Errorf("web after the change: %v", v)
	}
	if v := trace(dp, "10.96.0.11:80"); v.Action == datapath.Forward {
		t.Errorf("api, gone while the agent was away, is still forwarded: %v", v)
	}
}

// TestDigestIgnoredByOldControlPlane: a control plane that does not read
// digests (one that neither announces them nor reads the field) answers a
// digest as if the agent held nothing, which would leave what it no
// longer has on the node. The agent drops that answer unapplied and sends
// its versions on the next stream, and the removal reaches the datapath.
func TestDigestIgnoredByOldControlPlane(t *testing.T) {
	web, api := svc("web", "10.96.0.10", "10.244.1.5"), svc("api", "10.96.0.11", "10.244.2.5")
	cp, dp, a := syncedWith(t, web, api)

	cp.grpc.Stop()
	old := startControlPlaneWith(t, cp.addr, newStore(t, web), []grpc.ServerOption{grpc.StreamInterceptor(
		func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			return handler(srv, withoutDigests{ss})
		})})
	synced(t, old, a)
	wait.ForTrue(t, settle, "api, which the old control plane no longer has, is removed", func() bool {
		return trace(dp, "10.96.0.11:80").Action != datapath.Forward
	})
	if v := trace(dp, "10.96.0.10:80"); v.Backend.String() != "10.244.1.5:8080" {
		t.Errorf("web: %v", v)
	}
	if n := counter(t, old, initialRequests, "held", "versions"); n < 2 {
		t.Errorf("the old control plane read %v first requests as versions, want the ignored digest and then the versions", n)
	}
}

// syncedWith runs an agent in sync with a control plane serving services.
func syncedWith(t *testing.T, services ...*spokev1.Service) (*controlPlane, *memory.Datapath, *agent.Agent) {
	t.Helper()
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, services...))
	dp := memory.New(memory.Options{})
	a := newAgent(t, cp.addr, filepath.Join(t.TempDir(), "state.db"), dp)
	run(t, a)
	synced(t, cp, a)
	return cp, dp, a
}

// withoutDigests makes a stream look like one of a control plane that
// predates digests: it announces nothing and never sees the field.
type withoutDigests struct{ grpc.ServerStream }

func (withoutDigests) SetHeader(metadata.MD) error { return nil }

func (s withoutDigests) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if req, ok := m.(*spokev1.StreamViewsRequest); ok {
		req.InitialVersionsDigest = nil
	}
	return err
}
