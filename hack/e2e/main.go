// Command e2e runs Kubernetes' own service-proxy end-to-end tests (the
// [sig-network] Services, Conntrack, EndpointSlice, Endpoints, "Networking
// Granular Checks: Services", Traffic Distribution and Topology Hints specs of
// k8s.io/kubernetes v1.36.3) against a cluster whose only service proxy is
// Spoke.
//
// It builds e2e.test, ginkgo, kubectl and the test images (agnhost on a
// Debian root filesystem with the tools the tests exec, nginx, busybox and
// regression-issue-74839), all cached under ~/.cache/spoke. With -kubeconfig
// (default $KUBECONFIG) it uses that cluster, which must be one `make cluster`
// runs; otherwise it runs `make cluster` itself and stops it at the end. It
// imports the images into every node's containerd, runs the suite through
// ginkgo with --provider=skeleton, skipping the patterns of the skip file
// (one regular expression per line, each with its reason), writes JUnit under
// the report directory and ends with one line:
//
//	e2e: P passed, F failed, S skipped, T total
//
// It exits 1 when a test failed. -dry-run lists the selected tests without a
// cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// Focus selects the suite's service-proxy specs.
const focus = `\[sig-network\] (Services|Conntrack|EndpointSlice|Endpoints|EndpointsController|Networking Granular Checks: Services|Traffic Distribution|Topology Hints) `

type options struct {
	kubeconfig string
	reportDir  string
	skipFile   string
	procs      int
	timeout    time.Duration
	dryRun     bool
	focus      string
	// clusterFlags are make cluster's CLUSTER_FLAGS when this command runs it.
	clusterFlags string
	// numNodes is the cluster's node count, counted before the run.
	numNodes int
}

func main() {
	var o options
	flag.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "cluster to test (one `make cluster` runs); empty: run make cluster")
	flag.StringVar(&o.reportDir, "report-dir", "bin/e2e-report", "where JUnit and logs go")
	flag.StringVar(&o.skipFile, "skip-file", "hack/e2e/skip.txt", "regular expressions of specs to skip, one a line with its reason")
	flag.IntVar(&o.procs, "procs", 4, "ginkgo parallel processes")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Hour, "suite timeout")
	flag.BoolVar(&o.dryRun, "dry-run", false, "list the selected specs without running them (no cluster)")
	flag.StringVar(&o.focus, "focus", focus, "regular expression of the specs to run")
	// Three nodes give three zones, which the Traffic Distribution specs need.
	flag.StringVar(&o.clusterFlags, "cluster-flags", "-nodes=3", "make cluster's CLUSTER_FLAGS, when it runs make cluster")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, o, log)
	if err != nil {
		log.Error("e2e failed", "err", err)
		os.Exit(2)
	}
	os.Exit(code)
}

// run does everything and returns the exit code: 0 when no test failed.
func run(ctx context.Context, o options, log *slog.Logger) (code int, err error) {
	skips, err := readSkipFile(o.skipFile)
	if err != nil {
		return 0, err
	}
	if o.reportDir, err = filepath.Abs(o.reportDir); err != nil {
		return 0, err
	}
	if err := os.MkdirAll(o.reportDir, 0o755); err != nil {
		return 0, err
	}
	log.Info("building e2e.test and ginkgo (many minutes the first time)")
	t, err := buildTools(ctx, !o.dryRun)
	if err != nil {
		return 0, err
	}
	var kubeconfig string
	if !o.dryRun {
		images, err := buildImages(ctx, t, log)
		if err != nil {
			return 0, err
		}
		kubeconfig = o.kubeconfig
		if kubeconfig == "" {
			c, err := startCluster(ctx, o.clusterFlags, log)
			if err != nil {
				return 0, err
			}
			defer func() {
				if serr := c.stop(log); serr != nil && err == nil {
					err = serr
				}
			}()
			kubeconfig = c.kubeconfig
		}
		if err := importImages(ctx, images, log); err != nil {
			return 0, err
		}
		if o.numNodes, err = countNodes(ctx, t.kubectl, kubeconfig); err != nil {
			return 0, err
		}
	}
	if err := runSuite(ctx, o, t, kubeconfig, skips, log); err != nil {
		return 0, err
	}
	s, err := summarize(filepath.Join(o.reportDir, "junit_01.xml"))
	if err != nil {
		return 0, err
	}
	if o.dryRun {
		fmt.Printf("e2e: %d tests selected (dry run)\n", s.passed)
		return 0, nil
	}
	for _, f := range s.failedNames {
		fmt.Println("FAILED:", f)
	}
	fmt.Println(s)
	if s.failed > 0 {
		return 1, nil
	}
	return 0, nil
}
