package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestScenariosConverge runs every scenario on a small cluster, the control
// plane in its own process as by default (and a real kube-apiserver where
// the scenario needs one), and checks that every node ends holding exactly
// its view and that the figures the scenario exists for were measured.
func TestScenariosConverge(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the control plane")
	}
	for _, c := range []struct {
		scenario string
		figures  []string
		api      string
	}{
		{"churn", []string{"propagation_ms", "bytes_per_node_per_change"}, ""},
		{"controlplane-restart", []string{"reconnect_all_ms", "resources_resent", "agent_tokens_verified_locally", "api_requests_during_restart"}, ""},
		{"agent-restart", []string{"restart_ready_ms", "resources_resent_to_restarted"}, ""},
		{"slow-agents", []string{"healthy_p99_ms_with_slow", "healthy_p99_ms_without_slow"}, ""},
		{"apiserver-load", []string{"apiserver_bytes_spoke", "apiserver_bytes_per_node_watch", "apiserver_bytes_ratio"}, "kube-apiserver"},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			api := c.api
			if api == "" {
				api = "synthetic"
			}
			cfg := config{
				nodes: 30, zones: 3, services: 20, endpoints: 4, localFraction: 0.2, hintedFraction: 0.5,
				churn: 40, duration: 2 * time.Second, controlplane: "process", api: api, scenario: c.scenario,
				window: 20 * time.Millisecond, maxDelay: 100 * time.Millisecond, ackTimeout: time.Minute,
				fraction: 0.2, slowRate: 4096, startRate: 1000, syncTimeout: time.Minute, seed: 1, auth: true,
				out: io.Discard, progress: io.Discard, progressEvery: time.Second,
			}
			rep, err := run(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			f := rep.fields
			if f["converged"] != true {
				t.Errorf("not converged: %d mismatched nodes, %v/%v pairs; notes %v", f["mismatched_nodes"], f["expected_pairs_held"], f["expected_pairs"], rep.notes)
			}
			if n, _ := f["changes"].(uint64); n == 0 {
				t.Errorf("no change was made: %v", f["changes"])
			}
			for _, k := range c.figures {
				if _, ok := f[k]; !ok {
					t.Errorf("figure %s missing", k)
				}
			}
			// Agents reconnecting to a restarted control plane are bound
			// to their nodes without an API call each.
			if n, ok := f["agent_tokens_verified_locally"].(float64); ok && n < float64(cfg.nodes) {
				t.Errorf("%v agent tokens verified locally after the restart, want %d", n, cfg.nodes)
			}
			if n, ok := f["agent_tokens_reviewed"].(float64); ok && n != 0 {
				t.Errorf("%v agent tokens went to a TokenReview, want 0", n)
			}
			if n, ok := f["api_requests_during_restart"].(uint64); ok && n >= uint64(cfg.nodes) {
				t.Errorf("%d API requests while %d agents reconnected: not independent of the agents", n, cfg.nodes)
			}
			if r, ok := f["apiserver_bytes_ratio"].(float64); ok && r <= 1 {
				t.Errorf("per-node watches cost the API server %.1f× what Spoke's one watch does", r)
			}
		})
	}
}

// TestFailedAPIStartClosesCleanly checks that a simulator whose API failed
// to start reports the error and closes without touching the API.
func TestFailedAPIStartClosesCleanly(t *testing.T) {
	cfg := config{nodes: 2, zones: 1, services: 1, endpoints: 1, api: "kube-apiserver",
		kubeconfig: t.TempDir() + "/missing-kubeconfig", workDir: t.TempDir(), seed: 1, progress: io.Discard, out: io.Discard}
	s, err := setup(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		t.Fatal("setup with a missing kubeconfig succeeded")
	}
	if s == nil {
		t.Fatal("setup returned no simulator to close")
	}
	s.close() // panicked on the nil *kubeAPI inside the interface
}

func TestSumSamples(t *testing.T) {
	const text = `# TYPE spoke_controlplane_agent_token_checks_total counter
spoke_controlplane_agent_token_checks_total{method="local",result="ok"} 30
spoke_controlplane_agent_token_checks_total{method="local",result="rejected"} 2
spoke_controlplane_agent_token_checks_total{method="tokenreview",result="ok"} 1
spoke_controlplane_agent_token_checks_total_extra 100
`
	for _, c := range []struct {
		name  string
		want  float64
		found bool
	}{
		{"spoke_controlplane_agent_token_checks_total", 33, true},
		{`spoke_controlplane_agent_token_checks_total{method="local",result="ok"}`, 30, true},
		{`spoke_controlplane_agent_token_checks_total{method="local"`, 32, true},
		{"spoke_controlplane_missing_total", 0, false},
	} {
		got, found := sumSamples(strings.NewReader(text), c.name)
		if got != c.want || found != c.found {
			t.Errorf("%s: %v, %v; want %v, %v", c.name, got, found, c.want, c.found)
		}
	}
}
