package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
	"github.com/spoke-proxy/spoke/scale-sim/lightfleet"
)

// TestMain lets the light fleet run this test binary as its workers.
func TestMain(m *testing.M) {
	lightfleet.RunWorkerIfAsked()
	code := m.Run()
	if cpDir != "" {
		os.RemoveAll(cpDir)
	}
	os.Exit(code)
}

// cpDir holds the control plane the light fleet's tests build once.
var cpDir string

var controlPlaneBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "scale-sim-test-")
	if err != nil {
		return "", err
	}
	cpDir = dir
	bin := filepath.Join(dir, "spoke-controlplane")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/spoke-proxy/spoke/controlplane/cmd/spoke-controlplane").CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the control plane: %w\n%s", err, out)
	}
	return bin, nil
})

func lightConfig(scenario, bin string) config {
	return config{
		nodes: 20, zones: 3, services: 20, endpoints: 4, localFraction: 0.2, hintedFraction: 0.5,
		churn: 40, duration: 2 * time.Second, controlplane: "process", controlplaneBin: bin, api: "synthetic", scenario: scenario,
		window: 20 * time.Millisecond, maxDelay: 100 * time.Millisecond, ackTimeout: time.Minute,
		startRate: 1000, syncTimeout: time.Minute, seed: 1, auth: true, fleet: "light", fleetProcesses: 2,
		out: io.Discard, progress: io.Discard, progressEvery: time.Second,
	}
}

func buildControlPlane(t *testing.T) string {
	t.Helper()
	bin, err := controlPlaneBin()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestLightFleetConverges runs churn and controlplane-restart (with
// authentication) with the light fleet in two worker processes and the
// control plane in its own, and checks that every node ends holding the
// content the control plane serves it, and that propagation, the control
// plane's CPU and the reconnection were measured.
func TestLightFleetConverges(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the control plane")
	}
	bin := buildControlPlane(t)
	for _, c := range []struct {
		scenario string
		figures  []string
	}{
		{"churn", []string{"propagation_ms", "controlplane_cpu_seconds_per_1000_node_updates", "controlplane_peak_rss_mb"}},
		{"controlplane-restart", []string{"reconnect_all_ms", "resources_resent", "agent_tokens_verified_locally", "api_requests_during_restart"}},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cfg := lightConfig(c.scenario, bin)
			rep, err := run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			f := rep.fields
			if f["converged"] != true || f["mismatched_nodes"] != 0 {
				t.Errorf("not converged: %v mismatched nodes, %v/%v pairs; notes %v", f["mismatched_nodes"], f["expected_pairs_held"], f["expected_pairs"], rep.notes)
			}
			if n, _ := f["propagation_samples"].(uint64); n == 0 {
				t.Errorf("no propagation recorded (%v changes)", f["changes"])
			}
			if f["fleet"] != "light" {
				t.Errorf("fleet %v, want light", f["fleet"])
			}
			for _, k := range c.figures {
				if _, ok := f[k]; !ok {
					t.Errorf("figure %s missing", k)
				}
			}
			if n, ok := f["agents_not_reconnected"].(int); ok && n != 0 {
				t.Errorf("%d agents did not reconnect after the restart", n)
			}
			if n, ok := f["agent_tokens_verified_locally"].(float64); ok && n < float64(cfg.nodes) {
				t.Errorf("%v agent tokens verified locally after the restart, want %d", n, cfg.nodes)
			}
		})
	}
}

// TestLightFleetCheckFails checks that the convergence check of a light
// fleet fails when the control plane serves content other than what an
// agent holds.
func TestLightFleetCheckFails(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the control plane")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := lightConfig("churn", buildControlPlane(t))
	cfg.workDir = t.TempDir()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	s, err := setup(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if s != nil {
		defer s.close()
	}
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(s.cp.Address(), grpc.WithTransportCredentials(credentials.NewTLS(s.id.tls)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const node = 3
	vctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.id.tokens[node])
	v, err := spokev1.NewControlPlaneInspectionServiceClient(conn).GetNodeView(vctx, &spokev1.GetNodeViewRequest{NodeName: s.cluster.Nodes[node].Name})
	if err != nil {
		t.Fatal(err)
	}
	if diff := s.compareHashes(ctx, node, v); diff != "" {
		t.Fatalf("a synced node differs from its view: %s", diff)
	}
	changed := proto.Clone(v).(*spokev1.GetNodeViewResponse)
	var svc *spokev1.Service
	for _, r := range changed.GetResources() {
		if svc = r.GetService(); svc != nil {
			svc.Name += "-changed"
			break
		}
	}
	if svc == nil {
		t.Fatal("the node's view holds no service")
	}
	if diff := s.compareHashes(ctx, node, changed); !strings.Contains(diff, "agent holds content") {
		t.Errorf("a view whose content changed compared as %q, want a content difference", diff)
	}
	changed.Resources = changed.Resources[1:]
	if diff := s.compareHashes(ctx, node, changed); !strings.Contains(diff, "held by the agent only") {
		t.Errorf("a view missing a resource the agent holds compared as %q", diff)
	}
}

// TestLightFleetRefusesScenarios checks that the scenarios that need real
// agents refuse a light fleet with a reason.
func TestLightFleetRefusesScenarios(t *testing.T) {
	for _, sc := range []string{"agent-restart", "slow-agents", "apiserver-load"} {
		cfg := lightConfig(sc, "")
		if sc == "apiserver-load" {
			cfg.api = "kube-apiserver"
		}
		err := cfg.validate()
		if err == nil || !strings.Contains(err.Error(), "--fleet full") {
			t.Errorf("%s with a light fleet: %v, want a refusal naming --fleet full", sc, err)
		}
	}
}
