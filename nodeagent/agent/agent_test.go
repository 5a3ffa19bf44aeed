package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/server"
	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/datapath/fault"
	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/background"
	"github.com/spoke-proxy/spoke/internal/wait"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// controlPlane is a store and stream server on a loopback port.
type controlPlane struct {
	store  *store.Store
	server *server.Server
	grpc   *grpc.Server
	addr   string
	reg    *prometheus.Registry
	// health is the replica's gRPC health service, the view service
	// SERVING unless a test says otherwise.
	health *health.Server
}

func startControlPlane(t *testing.T, addr string, st *store.Store, with ...func(*server.Options)) *controlPlane {
	t.Helper()
	return startControlPlaneWith(t, addr, st, nil, with...)
}

// startControlPlaneWith is startControlPlane with extra gRPC server options.
func startControlPlaneWith(t *testing.T, addr string, st *store.Store, grpcOpts []grpc.ServerOption, with ...func(*server.Options)) *controlPlane {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cp := &controlPlane{store: st, addr: lis.Addr().String(), reg: prometheus.NewRegistry()}
	opts := server.Options{Store: st, Registerer: cp.reg}
	for _, f := range with {
		f(&opts)
	}
	cp.server = server.New(opts)
	cp.grpc = grpc.NewServer(append(server.ServerOptions(), grpcOpts...)...)
	cp.server.Register(cp.grpc)
	cp.health = health.NewServer()
	cp.health.SetServingStatus(viewService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(cp.grpc, cp.health)
	go cp.grpc.Serve(lis)
	t.Cleanup(cp.grpc.Stop)
	return cp
}

func newStore(t *testing.T, services ...*spokev1.Service) *store.Store {
	t.Helper()
	st := store.New()
	set(t, st, services...)
	if _, err := st.Apply(store.Batch{Nodes: map[string]*spokev1.Node{
		"node-1": {Name: "node-1", Addresses: []string{"192.168.0.1"}},
	}}); err != nil {
		t.Fatal(err)
	}
	st.MarkReady()
	return st
}

func set(t *testing.T, st *store.Store, services ...*spokev1.Service) {
	t.Helper()
	b := store.Batch{Services: map[string]*model.Views{}}
	for _, s := range services {
		b.Services[s.Namespace+"/"+s.Name] = &model.Views{Default: s}
	}
	if _, err := st.Apply(b); err != nil {
		t.Fatal(err)
	}
}

// svc is a service of one port; its node port is 30000 plus the cluster
// IP's last byte, unique as the API server makes node ports (web at
// 10.96.0.10 has 30010).
func svc(name, clusterIP string, endpoints ...string) *spokev1.Service {
	ip := netip.MustParseAddr(clusterIP).As4()
	p := &spokev1.ServicePort{Name: "http", Protocol: spokev1.Protocol_PROTOCOL_TCP, Port: 80, NodePort: 30000 + uint32(ip[3]),
		Internal: &spokev1.Backends{NoEndpoints: spokev1.NoEndpoints_NO_ENDPOINTS_REJECT}}
	for _, ep := range endpoints {
		p.Internal.Endpoints = append(p.Internal.Endpoints, &spokev1.Endpoint{Ip: ep, Port: 8080})
	}
	return &spokev1.Service{Namespace: "default", Name: name, ClusterIps: []string{clusterIP}, Ports: []*spokev1.ServicePort{p}}
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append(agent.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func newAgent(t *testing.T, addr, statePath string, dp *memory.Datapath) *agent.Agent {
	t.Helper()
	a, err := agent.New(agent.Options{
		NodeName: "node-1", Conn: dial(t, addr), Datapath: dp, StatePath: statePath,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func run(t *testing.T, a *agent.Agent) func() {
	return background.Run(context.Background(), t, "agent", a.Run)
}

// settle is how long the agent may take to reach a state.
const settle = 10 * time.Second

func state(t *testing.T, a *agent.Agent) *spokev1.GetStateResponse {
	t.Helper()
	st, err := a.GetState(context.Background(), &spokev1.GetStateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func trace(dp *memory.Datapath, dst string) datapath.Verdict {
	return dp.Trace(datapath.FromNode, datapath.Packet{Protocol: datapath.TCP,
		Src: netip.MustParseAddrPort("10.0.0.99:40000"), Dst: netip.MustParseAddrPort(dst)})
}

func nodeStatus(t *testing.T, cp *controlPlane) *spokev1.NodeStatus {
	t.Helper()
	resp, err := cp.server.ListNodes(context.Background(), &spokev1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range resp.GetNodes() {
		if n.GetNodeName() == "node-1" {
			return n
		}
	}
	return nil
}

// synced waits until the agent's stream is up and nothing is in flight.
func synced(t *testing.T, cp *controlPlane, a *agent.Agent) {
	t.Helper()
	wait.ForTrue(t, settle, "the agent is in sync", func() bool {
		st := nodeStatus(t, cp)
		if os.Getenv("DEBUG") != "" {
			t.Logf("status %v agent %v", st, state(t, a).GetConnected())
		}
		return st != nil && st.GetResponsesSent() > 0 && st.GetPendingNonce() == "" && state(t, a).GetConnected()
	})
}

// syncOnce runs an agent against cp until it is in sync, then stops it,
// leaving its state file at statePath and its programming in dp.
func syncOnce(t *testing.T, cp *controlPlane, statePath string, dp *memory.Datapath) {
	t.Helper()
	a := newAgent(t, cp.addr, statePath, dp)
	stop := run(t, a)
	synced(t, cp, a)
	stop()
}

func TestRestartProgramsFromStateBeforeConnecting(t *testing.T) {
	statePath := filepath.Join(t.TempDir(), "state.db")
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, svc("web", "10.96.0.10", "10.244.1.5"), svc("api", "10.96.0.11", "10.244.2.5")))

	dp1 := memory.New(memory.Options{})
	syncOnce(t, cp, statePath, dp1)
	if v := trace(dp1, "10.96.0.10:80"); v.Backend.String() != "10.244.1.5:8080" {
		t.Fatalf("first agent: %v", v)
	}

	// The restarted agent programs a fresh datapath from its state file
	// while the control plane is out of reach.
	dp2 := memory.New(memory.Options{})
	a2 := newAgent(t, "127.0.0.1:1", statePath, dp2)
	if err := a2.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !a2.Ready() {
		t.Fatal("not ready after restoring")
	}
	a2.Close()
	if v := trace(dp2, "10.96.0.11:80"); v.Backend.String() != "10.244.2.5:8080" {
		t.Fatalf("restored datapath before connecting: %v", v)
	}
	if v := trace(dp2, "192.168.0.1:30010"); v.Backend.String() != "10.244.1.5:8080" {
		t.Fatalf("restored node port before connecting: %v", v)
	}
	st := state(t, a2)
	if st.GetRestoredFromCache() != 3 || st.GetConnected() {
		t.Fatalf("restored %d resources (want 3: two services and the node), connected %v", st.GetRestoredFromCache(), st.GetConnected())
	}

	// Connected, with nothing changed, it receives nothing.
	a3 := newAgent(t, cp.addr, statePath, dp2)
	run(t, a3)
	synced(t, cp, a3)
	st = state(t, a3)
	if st.GetResourcesReceived() != 0 {
		t.Fatalf("restarted agent received %d resources, want 0", st.GetResourcesReceived())
	}
	if ns := nodeStatus(t, cp); ns.GetResourcesSent() != 0 {
		t.Fatalf("control plane sent %d resources to the restarted agent, want 0", ns.GetResourcesSent())
	}
	if !st.GetCacheAppliedAt().AsTime().Before(st.GetConnectedAt().AsTime()) {
		t.Fatalf("cache applied at %v, not before connecting at %v", st.GetCacheAppliedAt().AsTime(), st.GetConnectedAt().AsTime())
	}
}

func TestRejectedServiceKeepsLastGoodState(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, svc("web", "10.96.0.10", "10.244.1.5")))
	dp := memory.New(memory.Options{})
	faulty := fault.Wrap(dp)
	a, err := agent.New(agent.Options{NodeName: "node-1", Conn: dial(t, cp.addr), Datapath: faulty,
		StatePath: filepath.Join(t.TempDir(), "state.db"), Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	synced(t, cp, a)

	// The datapath finds the second service invalid: it is rejected, and
	// the update of the first one in the same response still applies.
	faulty.FailApply("default/api", fmt.Errorf("%w default/api: cannot be expressed", datapath.ErrInvalid), -1)
	set(t, cp.store, svc("web", "10.96.0.10", "10.244.1.6"), svc("api", "10.96.0.11", "10.244.2.5"))
	wait.ForTrue(t, settle, "the control plane sees the NACK", func() bool {
		st := nodeStatus(t, cp)
		if os.Getenv("DEBUG") != "" {
			t.Logf("status %v agent %v", st, state(t, a).GetConnected())
		}
		return st != nil && len(st.GetNacked()) == 1 && st.GetPendingNonce() == ""
	})
	ns := nodeStatus(t, cp)
	if _, ok := ns.GetNacked()[0].GetVersions()["default/api"]; !ok || len(ns.GetNacked()[0].GetVersions()) != 1 {
		t.Fatalf("nacked versions %v, want default/api alone", ns.GetNacked()[0].GetVersions())
	}
	if !strings.Contains(ns.GetNacked()[0].GetMessage(), "cannot be expressed") {
		t.Fatalf("NACK message %q does not say why", ns.GetNacked()[0].GetMessage())
	}
	if v := trace(dp, "10.96.0.10:80"); v.Backend.String() != "10.244.1.6:8080" {
		t.Fatalf("accepted update not applied: %v", v)
	}
	if v := trace(dp, "10.96.0.11:80"); v.Action != datapath.Pass {
		t.Fatalf("rejected service is programmed: %v", v)
	}
	received := state(t, a).GetResourcesReceived()

	// The rejected version is never sent again; later changes flow.
	set(t, cp.store, svc("web", "10.96.0.10", "10.244.1.7"))
	wait.ForTrue(t, settle, "the next change arrives", func() bool {
		return trace(dp, "10.96.0.10:80").Backend.String() == "10.244.1.7:8080"
	})
	synced(t, cp, a)
	if got := state(t, a).GetResourcesReceived() - received; got != 1 {
		t.Fatalf("the agent received %d resources for one change (the rejected one was resent?)", got)
	}
	if st := state(t, a); st.GetNacks() != 1 || !strings.Contains(st.GetLastNack(), "default/api") {
		t.Fatalf("agent inspection: %d nacks, last %q", st.GetNacks(), st.GetLastNack())
	}
}

func TestCorruptStateFileIsMovedAside(t *testing.T) {
	dir := t.TempDir()
	statePath := filepath.Join(dir, "state.db")
	if err := os.WriteFile(statePath, []byte(strings.Repeat("not a bbolt file ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, svc("web", "10.96.0.10", "10.244.1.5")))
	dp := memory.New(memory.Options{})
	a := newAgent(t, cp.addr, statePath, dp)
	run(t, a)
	synced(t, cp, a)
	if v := trace(dp, "10.96.0.10:80"); v.Action != datapath.Forward {
		t.Fatalf("after resync: %v", v)
	}
	moved, _ := filepath.Glob(statePath + ".corrupt-*")
	if len(moved) != 1 {
		t.Fatalf("corrupt file not moved aside: %v", moved)
	}
}

func TestControlPlaneRestartKeepsDatapath(t *testing.T) {
	services := []*spokev1.Service{svc("web", "10.96.0.10", "10.244.1.5"), svc("api", "10.96.0.11", "10.244.2.5")}
	cp := startControlPlane(t, "127.0.0.1:0", newStore(t, services...))
	dp := memory.New(memory.Options{})
	a := newAgent(t, cp.addr, filepath.Join(t.TempDir(), "state.db"), dp)
	run(t, a)
	synced(t, cp, a)
	received := state(t, a).GetResourcesReceived()

	cp.grpc.Stop()
	wait.ForTrue(t, settle, "the agent notices", func() bool { return !state(t, a).GetConnected() })
	for _, dst := range []string{"10.96.0.10:80", "10.96.0.11:80"} {
		if v := trace(dp, dst); v.Action != datapath.Forward {
			t.Fatalf("with the control plane down, %s: %v", dst, v)
		}
	}
	// A new replica with the same view: the agent resumes and gets nothing.
	cp2 := startControlPlane(t, cp.addr, newStore(t, services...))
	synced(t, cp2, a)
	if got := state(t, a).GetResourcesReceived() - received; got != 0 {
		t.Fatalf("after the control-plane restart the agent received %d resources, want 0", got)
	}
	if ns := nodeStatus(t, cp2); ns.GetResourcesSent() != 0 {
		t.Fatalf("new control plane sent %d resources", ns.GetResourcesSent())
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

// TestFailoverToLaggingReplicaDoesNotRollBack: an agent synced with one
// replica, restarted from its state file and pointed at a replica that has
// not yet followed the API as far, keeps its newer state until that
// replica catches up, and is never sent the older view.
func TestFailoverToLaggingReplicaDoesNotRollBack(t *testing.T) {
	statePath := filepath.Join(t.TempDir(), "state.db")
	ahead, behind := newStore(t), newStore(t)
	publishWeb(t, ahead, 20, svc("web", "10.96.0.10", "10.244.1.6"))
	publishWeb(t, behind, 15, svc("web", "10.96.0.10", "10.244.1.5"))
	cpAhead, cpBehind := startControlPlane(t, "127.0.0.1:0", ahead), startControlPlane(t, "127.0.0.1:0", behind)

	dp := memory.New(memory.Options{})
	syncOnce(t, cpAhead, statePath, dp)

	a2 := newAgent(t, cpBehind.addr, statePath, dp)
	run(t, a2)
	wait.ForTrue(t, settle, "the lagging replica holds the agent's stream", func() bool {
		return counter(t, cpBehind, "spoke_controlplane_agent_catch_up_waits_total") == 1
	})
	time.Sleep(200 * time.Millisecond)
	if v := trace(dp, "10.96.0.10:80"); v.Backend.String() != "10.244.1.6:8080" {
		t.Fatalf("agent rolled back by a lagging replica: %v", v)
	}
	if st := state(t, a2); st.GetResourcesReceived() != 0 {
		t.Fatalf("lagging replica sent %d resources before catching up", st.GetResourcesReceived())
	}
	publishWeb(t, behind, 20, svc("web", "10.96.0.10", "10.244.1.6"))
	synced(t, cpBehind, a2)
	if st := state(t, a2); st.GetResourcesReceived() != 0 {
		t.Errorf("caught-up replica sent %d resources the agent already held", st.GetResourcesReceived())
	}
	if v := trace(dp, "10.96.0.10:80"); v.Backend.String() != "10.244.1.6:8080" {
		t.Errorf("after catching up: %v", v)
	}
}

// publishWeb publishes s as default/web's view at API revisions that
// differ only in the endpoint slices' revision.
func publishWeb(t *testing.T, st *store.Store, slices uint64, s *spokev1.Service) {
	t.Helper()
	rev := &spokev1.ApiRevisions{Services: 10, EndpointSlices: slices, Nodes: 10}
	if _, err := st.Apply(store.Batch{Services: map[string]*model.Views{"default/web": {Default: s}}, APIRevisions: rev}); err != nil {
		t.Fatal(err)
	}
}

// counter returns the value of a control plane's counter; labels, as
// name and value pairs, pick one of a vector's.
func counter(t *testing.T, cp *controlPlane, name string, labels ...string) float64 {
	t.Helper()
	fams, err := cp.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			if len(labels) == 0 && len(f.GetMetric()) != 1 {
				t.Fatalf("%s has %d series: name one", name, len(f.GetMetric()))
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestAgentForgetsRevisionsNoReplicaReaches: when every replica keeps
// refusing the agent for holding newer API revisions (an etcd restored to
// an older revision), the agent stops claiming them after a few refusals
// and is served again, rather than never.
func TestAgentForgetsRevisionsNoReplicaReaches(t *testing.T) {
	statePath := filepath.Join(t.TempDir(), "state.db")
	before, restored := newStore(t), newStore(t)
	publishWeb(t, before, 900, svc("web", "10.96.0.10", "10.244.1.6"))
	publishWeb(t, restored, 40, svc("web", "10.96.0.10", "10.244.1.7"))
	cpBefore := startControlPlane(t, "127.0.0.1:0", before)
	cpRestored := startControlPlane(t, "127.0.0.1:0", restored, func(o *server.Options) { o.CatchUpTimeout = 50 * time.Millisecond })

	dp := memory.New(memory.Options{})
	syncOnce(t, cpBefore, statePath, dp)

	a2 := newAgent(t, cpRestored.addr, statePath, dp)
	run(t, a2)
	synced(t, cpRestored, a2)
	if v := trace(dp, "10.96.0.10:80"); v.Backend.String() != "10.244.1.7:8080" {
		t.Errorf("after the refusals the agent programs %v, want the restored cluster's 10.244.1.7:8080", v)
	}
	if got := counter(t, cpRestored, "spoke_controlplane_agent_catch_up_waits_total"); got < agent.ForgetRevisionsAfter {
		t.Errorf("%v refusals before the agent was served, want at least %d", got, agent.ForgetRevisionsAfter)
	}
}
