package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// herdReport is what the scenario reads of scale-sim's JSON line.
type herdReport struct {
	Converged      bool    `json:"converged"`
	Mismatched     int     `json:"mismatched_nodes"`
	NotReconnected int     `json:"agents_not_reconnected"`
	RefusedByRate  float64 `json:"streams_refused_by_rate"`
	AheadOfLimit   *int    `json:"served_ahead_of_rate_limit"`
	PeakRSSMB      float64 `json:"controlplane_peak_rss_after_restart_mb"`
	TokensReviewed float64 `json:"agent_tokens_reviewed"`
	TokensLocal    float64 `json:"agent_tokens_verified_locally"`
}

// TestScenario8ThunderingHerd: the control plane is restarted under
// thousands of simulated agents (scale-sim's light fleet, in worker
// processes of their own, over TLS with pod-bound tokens) with its limit
// on new streams on and a memory limit set. The reconnects are
// rate-limited and so spread out (streams are refused, and no agent is
// ever served ahead of what the token bucket allows), the new
// control plane's peak RSS stays within its limit, and every agent
// converges: each holds, by content, the view the control plane serves its
// node. The long form runs against a real kube-apiserver with real bound
// tokens; the short one against the simulator's synthetic API.
func TestScenario8ThunderingHerd(t *testing.T) {
	binaries(t)
	// The rate is below what the control plane serves on a 2-core machine
	// shared with the fleet (about 350 agents a second at 3,000), so that
	// the limit, not the machine, spreads the herd.
	nodes, rate, memMiB := pick(300, 3000), pick(100, 200), pick(256, 1024)
	ctx, cancel := context.WithTimeout(t.Context(), pick(3*time.Minute, 20*time.Minute))
	defer cancel()
	dir := t.TempDir()
	args := []string{
		"--scenario", "controlplane-restart", "--fleet", "light", "--fleet-processes", "2",
		"--nodes", fmt.Sprint(nodes), "--services", fmt.Sprint(pick(100, 1000)), "--auth=true",
		"--new-streams-per-second", fmt.Sprint(rate), "--new-streams-burst", fmt.Sprint(rate),
		"--controlplane-memory-limit-mib", fmt.Sprint(memMiB),
		"--churn", "0", "--duration", "0", "--json",
		"--controlplane-bin", bins.controlPlane, "--workdir", dir,
		"--api", pick("synthetic", "kube-apiserver"),
	}
	cmd := exec.CommandContext(ctx, bins.sim, args...)
	var stdout bytes.Buffer
	progress, err := os.Create(filepath.Join(dir, "progress.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer progress.Close()
	cmd.Stdout, cmd.Stderr = &stdout, progress
	runErr := cmd.Run()
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	t.Logf("scale-sim %s\n%s", strings.Join(args, " "), strings.Join(lines[:len(lines)-1], "\n"))
	if runErr != nil {
		b, _ := os.ReadFile(progress.Name())
		t.Fatalf("scale-sim: %v\n%s", runErr, b)
	}
	var r herdReport
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("scale-sim's last line: %v", err)
	}
	if !r.Converged || r.Mismatched > 0 || r.NotReconnected > 0 {
		t.Errorf("not every agent converged: converged %v, %d nodes mismatched, %d not reconnected", r.Converged, r.Mismatched, r.NotReconnected)
	}
	if r.RefusedByRate == 0 {
		t.Errorf("no stream was refused for the rate of new streams: %d agents reconnected within a bucket of %d and %d/s", nodes, rate, rate)
	}
	if r.AheadOfLimit == nil || *r.AheadOfLimit > 0 {
		t.Errorf("agents were served ahead of the new-stream limit (%d/s, burst %d): %v more than it admits", rate, rate, r.AheadOfLimit)
	}
	if r.PeakRSSMB == 0 || r.PeakRSSMB > float64(memMiB) {
		t.Errorf("the new control plane's peak RSS was %.0f MiB, its limit %d MiB", r.PeakRSSMB, memMiB)
	}
	if r.TokensReviewed > 0 || r.TokensLocal < float64(nodes) {
		t.Errorf("tokens verified locally %.0f, by TokenReview %.0f; want all %d locally", r.TokensLocal, r.TokensReviewed, nodes)
	}
}
