package agent_test

import (
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

var viewService = spokev1.ViewService_ServiceDesc.ServiceName

// dialReplicas connects to a control-plane name that resolves to every
// replica's address, in the order given, as a DNS name of the replicas
// does.
func dialReplicas(t *testing.T, replicas ...*controlPlane) *grpc.ClientConn {
	t.Helper()
	r := manual.NewBuilderWithScheme("replicas")
	var st resolver.State
	for _, cp := range replicas {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: cp.addr})
	}
	r.InitialState(st)
	conn, err := grpc.NewClient(r.Scheme()+":///controlplane", append(agent.DialOptions(),
		grpc.WithResolvers(r), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestStreamOpensOnAServingReplica: of two replicas, the first one the
// agent's control-plane name resolves to is not ready (its view service
// NOT_SERVING, as a replica with a stalled watch says): the agent's stream
// opens on the other. When that one dies, the stream moves to the first,
// ready by then, and receives nothing it holds.
func TestStreamOpensOnAServingReplica(t *testing.T) {
	services := []*spokev1.Service{svc("web", "10.96.0.10", "10.244.1.5")}
	stalled, ready := startControlPlane(t, "127.0.0.1:0", newStore(t, services...)), startControlPlane(t, "127.0.0.1:0", newStore(t, services...))
	stalled.health.SetServingStatus(viewService, healthpb.HealthCheckResponse_NOT_SERVING)
	a, err := agent.New(agent.Options{NodeName: "node-1", Conn: dialReplicas(t, stalled, ready),
		Datapath: memory.New(memory.Options{}), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	synced(t, ready, a)
	if st := nodeStatus(t, stalled); st != nil {
		t.Fatalf("the replica that is not ready serves the agent: %v", st)
	}
	received := state(t, a).GetResourcesReceived()

	stalled.health.SetServingStatus(viewService, healthpb.HealthCheckResponse_SERVING)
	ready.grpc.Stop()
	synced(t, stalled, a)
	if got := state(t, a).GetResourcesReceived() - received; got != 0 {
		t.Errorf("after the failover the agent received %d resources it held", got)
	}
}
