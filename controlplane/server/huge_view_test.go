//go:build !race

package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spoke-proxy/spoke/controlplane/server"
	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// TestViewOf200MiBIsHeldBack gives the control plane, with its default
// limits, a service whose view encodes to more than 200 MiB (4.8 million
// IPv6 endpoints) beside two ordinary ones. Three agents, dialling as the
// real agent does, each receive both ordinary services and never the huge
// one, which the inspection service and a metric name with its size. It
// holds about 1 GiB of heap, too much under the race detector: make test
// runs it on its own.
func TestViewOf200MiBIsHeldBack(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := start(t, server.Options{Store: store.NewWithOptions(store.Options{Registerer: reg})})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	huge := svc("a", "huge")
	eps := make([]*spokev1.Endpoint, 4_800_000)
	for i := range eps {
		eps[i] = &spokev1.Endpoint{Ip: fmt.Sprintf("fd00:1234:5678:9abc:def0:0000:%04x:%04x", i>>16&0xffff, i&0xffff), Port: 8080}
	}
	huge.Ports[0].Internal.Endpoints = eps
	f.set(t, svc("a", "one", "10.0.0.1"), huge, svc("b", "two", "10.0.0.2"))
	f.store.MarkReady()

	conn, err := grpc.NewClient(f.addr, append(agent.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	for _, node := range []string{"node-1", "node-2", "node-3"} {
		c := dialOn(ctx, t, conn, node, nil)
		c.ack(c.recvNames("[a/one b/two]", node+"'s response (without the held-back a/huge)"))
	}
	held, err := spokev1.NewControlPlaneInspectionServiceClient(f.conn).ListHeldBack(ctx, &spokev1.ListHeldBackRequest{})
	if err != nil {
		t.Fatal(err)
	}
	hs := held.GetServices()
	if len(hs) != 1 || hs[0].GetName() != "a/huge" || hs[0].GetViewBytes() < 200<<20 || hs[0].GetLimitBytes() != spokev1.MaxViewBytes {
		t.Fatalf("held back: %v, want a/huge above 200 MiB with the limit %d", hs, spokev1.MaxViewBytes)
	}
	want := fmt.Sprintf(`
# HELP spoke_controlplane_held_back_view_bytes Size of the largest view of each service held back from agents for exceeding the per-view limit.
# TYPE spoke_controlplane_held_back_view_bytes gauge
spoke_controlplane_held_back_view_bytes{service="a/huge"} %d
`, hs[0].GetViewBytes())
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "spoke_controlplane_held_back_view_bytes"); err != nil {
		t.Error(err)
	}
	t.Logf("a/huge: %d MiB held back (limit %d MiB); every agent received the other services", hs[0].GetViewBytes()>>20, hs[0].GetLimitBytes()>>20)
}
