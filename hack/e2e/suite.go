package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// runSuite runs e2e.test through ginkgo: the focused specs minus the skips,
// JUnit into the report directory. A failing spec is not an error here; the
// JUnit report says which.
func runSuite(ctx context.Context, o options, t tools, kubeconfig string, skips []skip, log *slog.Logger) error {
	// ginkgo takes a precompiled suite only by a name ending in .test.
	bin := filepath.Join(o.reportDir, "e2e.test")
	os.Remove(bin)
	if err := os.Symlink(t.e2eTest, bin); err != nil {
		return err
	}
	args := ginkgoArgs(o, skips)
	args = append(args, bin, "--")
	args = append(args, e2eArgs(o, t, kubeconfig)...)
	log.Info("running the suite", "procs", o.procs, "report", o.reportDir, "dry-run", o.dryRun)
	cmd := exec.CommandContext(ctx, t.ginkgo, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// On Ctrl-C ginkgo gets SIGINT and reports what ran.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = time.Minute
	err := cmd.Run()
	if exitErr := (*exec.ExitError)(nil); errors.As(err, &exitErr) && ctx.Err() == nil {
		return nil // failed specs
	}
	if err != nil {
		return fmt.Errorf("ginkgo: %w", err)
	}
	return nil
}

func ginkgoArgs(o options, skips []skip) []string {
	procs := o.procs
	if o.dryRun {
		procs = 1 // ginkgo dry-runs only in series
	}
	args := []string{
		"--procs", fmt.Sprint(procs),
		"--timeout", o.timeout.String(),
		"--focus", o.focus,
		"--no-color",
		"--poll-progress-after", "5m",
	}
	for _, s := range skips {
		args = append(args, "--skip", s.pattern)
	}
	if o.dryRun {
		args = append(args, "--dry-run", "-v")
	}
	return args
}

func e2eArgs(o options, t tools, kubeconfig string) []string {
	args := []string{
		"--provider=skeleton",
		"--report-dir=" + o.reportDir,
		"--disable-log-dump",
	}
	if kubeconfig != "" {
		args = append(args, "--kubeconfig="+kubeconfig)
	}
	// Without it the skeleton provider leaves the node count at -1 and
	// every spec that needs two nodes skips itself.
	if o.numNodes > 0 {
		args = append(args, fmt.Sprintf("--num-nodes=%d", o.numNodes))
	}
	if t.kubectl != "" {
		args = append(args, "--kubectl-path="+t.kubectl)
	}
	return args
}

// countNodes returns the number of nodes of the cluster kubeconfig names.
func countNodes(ctx context.Context, kubectl, kubeconfig string) (int, error) {
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig="+kubeconfig, "get", "nodes", "-o", "name").Output()
	if err != nil {
		return 0, fmt.Errorf("counting the nodes: %w", err)
	}
	return len(strings.Fields(string(out))), nil
}
