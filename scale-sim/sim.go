package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spoke-proxy/spoke/internal/countproxy"
	"github.com/spoke-proxy/spoke/scale-sim/cluster"
	"github.com/spoke-proxy/spoke/scale-sim/fleet"
	"github.com/spoke-proxy/spoke/scale-sim/lightfleet"
	"github.com/spoke-proxy/spoke/scale-sim/tracker"
)

// sim is one run: the cluster, its API, the control plane, the fleet of
// agents and the tracker of what they applied.
type sim struct {
	c       config
	log     *slog.Logger
	cluster *cluster.Cluster
	api     apiSource
	cp      controlPlane
	fleet   nodeFleet
	// full is the fleet of real agents, light the light one: one is nil.
	full    *fleet.Fleet
	light   *lightfleet.Fleet
	tracker *tracker.Tracker
	// id authenticates the agents; nil with --auth=false.
	id *identity
	// spokeProxy counts what the API server sends the control plane
	// (apiserver-load only).
	spokeProxy *countproxy.Proxy
	started    time.Time
	loadStart  [3]float64

	// Figures the scenarios fill in.
	churnStart, churnEnd time.Time
	rxStart, rxEnd       uint64
	cpuStart, cpuEnd     usage
	cpProf               cpProfiles
	changes, failed      atomic.Uint64
	extra                map[string]any
	table                [][2]string
	notes                []string
}

func setup(ctx context.Context, c config, log *slog.Logger) (*sim, error) {
	s := &sim{c: c, log: log, started: time.Now(), extra: map[string]any{},
		cpProf: cpProfiles{cpu: c.cpCPUProfile, heap: c.cpHeapProfile}}
	s.loadStart = loadAvg()
	s.progressf("generating %d nodes, %d services × %d endpoints", c.nodes, c.services, c.endpoints)
	s.cluster = cluster.New(cluster.Spec{
		Nodes: c.nodes, Zones: c.zones, Services: c.services, EndpointsPerService: c.endpoints,
		LocalFraction: c.localFraction, HintedFraction: c.hintedFraction, Seed: c.seed,
	})

	var err error
	if s.api, err = s.startAPI(ctx); err != nil {
		return s, err
	}
	s.progressf("creating the objects in the %s API", c.api)
	if err := s.api.Load(ctx, s.cluster); err != nil {
		return s, err
	}
	for i := range s.cluster.Services {
		v, err := s.cluster.Compute(i, 0, nil)
		if err != nil {
			return s, err
		}
		s.cluster.SetViews(i, &v)
	}
	s.tracker = tracker.New(s.cluster)

	restCfg := s.api.RESTConfig()
	kubeconfig := filepath.Join(c.workDir, "controlplane.kubeconfig")
	host := ""
	if c.scenario == "apiserver-load" {
		if s.spokeProxy, err = startCountingProxy(restCfg.Host); err != nil {
			return s, err
		}
		host = "https://" + s.spokeProxy.Addr()
		restCfg.Host = host
	}
	if err := writeKubeconfig(kubeconfig, restCfg, host); err != nil {
		return s, err
	}
	names := make([]string, len(s.cluster.Nodes))
	for i, n := range s.cluster.Nodes {
		names[i] = n.Name
	}
	var id *identity
	if c.auth {
		s.progressf("issuing a serving certificate and %d agent tokens bound to agent pods", len(names))
		if id, err = newIdentity(ctx, s.api, c.workDir, names); err != nil {
			return s, err
		}
		s.id = id
	}
	settings := cpSettings{window: c.window, maxDelay: c.maxDelay, ackTimeout: c.ackTimeout,
		kubeconfig: kubeconfig, restConfig: restCfg, dir: c.workDir, bin: c.controlplaneBin, log: log, id: id,
		limits: c.limits(), memoryLimitMiB: c.cpMemoryLimitMiB}
	if c.api == "synthetic" {
		settings.watchStall = 24 * time.Hour // it sends no bookmarks
	}
	var cp controlPlane
	switch c.controlplane {
	case "process":
		cp, err = startProcessCP(ctx, settings)
	case "inproc":
		cp, err = startInprocCP(settings)
	default:
		cp = &remoteCP{addr: c.controlplane, metricsURL: c.controlplaneMetrics}
	}
	if err != nil {
		return s, err
	}
	s.cp = cp
	readyCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := s.cp.Ready(readyCtx); err != nil {
		return s, err
	}

	stateDir := ""
	if c.bbolt || c.scenario == "agent-restart" {
		stateDir = filepath.Join(c.workDir, "state")
		if err := os.MkdirAll(stateDir, 0o755); err != nil {
			return s, err
		}
	}
	if c.fleet == "light" {
		if err := s.startLightFleet(names); err != nil {
			return s, err
		}
	} else {
		fo := fleet.Options{
			Names: names, Address: s.cp.Address(), StateDir: stateDir,
			OnApplied: s.tracker.Applied, Logger: log,
		}
		if id != nil {
			fo.TLS, fo.Tokens = id.tls, id.tokens
		}
		s.full = fleet.New(fo)
		s.fleet = s.full
	}
	if err := s.startAgents(ctx); err != nil {
		return s, err
	}
	return s, nil
}

// startAgents starts every agent at the configured rate and waits until
// each holds its whole view.
func (s *sim) startAgents(ctx context.Context) error {
	start := time.Now()
	interval := time.Duration(float64(time.Second) / s.c.startRate)
	next := time.Now()
	for i := range s.fleet.Len() {
		if _, err := s.fleet.Start(i); err != nil {
			return err
		}
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
		}
		if i%1000 == 999 {
			s.progressf("setup: %d/%d agents started, %s", i+1, s.fleet.Len(), s.syncStatus())
		}
	}
	if err := s.waitSynced(ctx, "setup", s.c.syncTimeout); err != nil {
		return err
	}
	s.table = append(s.table, [2]string{"initial sync of every agent", fmtDur(time.Since(start))})
	return nil
}

func (s *sim) syncStatus() string {
	ok, total := s.tracker.Converged()
	return fmt.Sprintf("%d/%d node-service pairs hold the expected view", ok, total)
}

// waitSynced waits until every node holds the expected version of every
// service.
func (s *sim) waitSynced(ctx context.Context, what string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	lastProgress := time.Now()
	for {
		ok, total := s.tracker.Converged()
		if ok == total {
			return nil
		}
		if err := s.fleetErr(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: agents did not sync within %s: %s", what, timeout, s.syncStatus())
		}
		if time.Since(lastProgress) >= s.c.progressEvery {
			s.progressf("%s: %s; %s", what, s.syncStatus(), s.cpStatus())
			lastProgress = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *sim) cpStatus() string {
	u := s.cp.Usage()
	if !u.Known {
		return "control plane usage unknown"
	}
	return fmt.Sprintf("control plane RSS %s, CPU %.1fs", fmtMB(u.RSS), u.CPU.Seconds())
}

func (s *sim) progressf(format string, args ...any) {
	fmt.Fprintf(s.c.progress, "[%6.1fs] %s\n", time.Since(s.started).Seconds(), fmt.Sprintf(format, args...))
}

// startAPI starts the API the configuration names. On failure it returns
// a nil apiSource, never a nil pointer inside one, so that close skips it.
func (s *sim) startAPI(ctx context.Context) (apiSource, error) {
	if s.c.api == "synthetic" {
		a, err := startSynthetic()
		if err != nil {
			return nil, err
		}
		return a, nil
	}
	if s.c.kubeconfig == "" {
		s.progressf("starting kube-apiserver and etcd (the first build takes about five minutes)")
	}
	a, err := startKubeAPI(ctx, s.c.workDir, s.c.kubeconfig)
	if err != nil {
		return nil, err
	}
	return a, nil
}

func (s *sim) note(format string, args ...any) {
	s.notes = append(s.notes, fmt.Sprintf(format, args...))
}

func (s *sim) close() {
	if s.fleet != nil {
		s.fleet.StopAll()
	}
	if s.cp != nil {
		s.cp.Stop()
	}
	if s.spokeProxy != nil {
		s.spokeProxy.Close()
	}
	if s.api != nil {
		s.api.Stop()
	}
}

// churn changes endpoints at the configured rate for the configured
// duration, counting the changes in the given tracker phase.
func (s *sim) churn(ctx context.Context, phase int, label string) {
	s.tracker.SetPhase(phase)
	if s.c.churn == 0 || s.c.duration <= 0 {
		return
	}
	workers := 2
	if s.c.api == "kube-apiserver" {
		workers = 16
	}
	jobs := make(chan struct{}, max(64, int(s.c.churn)))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range jobs {
				s.change(ctx)
			}
		})
	}
	interval := time.Duration(float64(time.Second) / s.c.churn)
	start := time.Now()
	end := start.Add(s.c.duration)
	lastProgress := start
	skipped := 0
	startChanges := s.changes.Load()
	for k := 0; ; k++ {
		at := start.Add(time.Duration(k) * interval)
		if !at.Before(end) || ctx.Err() != nil {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		select {
		case jobs <- struct{}{}:
		default:
			skipped++
		}
		if time.Since(lastProgress) >= s.c.progressEvery {
			lastProgress = time.Now()
			h := s.tracker.Phase(phase).Histogram
			elapsed := time.Since(start)
			s.progressf("%s: %d changes (%.0f/s), propagation p50 %s p99 %s max %s over %d node-changes, %d pending; %s",
				label, s.changes.Load()-startChanges, float64(s.changes.Load()-startChanges)/elapsed.Seconds(),
				fmtDur(h.Quantile(0.5)), fmtDur(h.Quantile(0.99)), fmtDur(h.Max()), h.Count(), s.tracker.Pending(), s.cpStatus())
		}
	}
	close(jobs)
	wg.Wait()
	if skipped > 0 {
		s.note("%s: %d changes skipped: the API did not keep up with --churn %.0f/s", label, skipped, s.c.churn)
	}
}

// change replaces one endpoint of a random service at the API.
func (s *sim) change(ctx context.Context) {
	c := s.cluster
	i := c.RandService()
	c.Lock(i)
	defer c.Unlock(i)
	slice, es := c.Replace(i)
	next, err := c.Compute(i, slice, es)
	if err != nil {
		s.log.Error("computing views", "err", err)
		s.failed.Add(1)
		return
	}
	old := c.Views(i)
	ch := s.tracker.NewChange(i, old, &next)
	c.SetViews(i, &next)
	ch.Sent(time.Now())
	stored, err := s.api.Update(ctx, es)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("updating an endpoint slice", "slice", es.Name, "err", err)
		}
		s.failed.Add(1)
		return
	}
	c.Commit(i, slice, stored)
	s.changes.Add(1)
}

// settle waits for every node to hold the expected views after churn.
func (s *sim) settle(ctx context.Context, what string) {
	if err := s.waitSynced(ctx, what, 2*time.Minute); err != nil {
		s.note("%v", err)
	}
}

func (s *sim) runScenario(ctx context.Context) error {
	switch s.c.scenario {
	case "churn":
		return s.scenarioChurn(ctx)
	case "controlplane-restart":
		return s.scenarioControlPlaneRestart(ctx)
	case "agent-restart":
		return s.scenarioAgentRestart(ctx)
	case "slow-agents":
		return s.scenarioSlowAgents(ctx)
	case "apiserver-load":
		return s.scenarioAPIServerLoad(ctx)
	}
	return errors.New("unknown scenario")
}

func (s *sim) measuredChurn(ctx context.Context, phase int, label string) {
	s.rxStart = s.fleet.RxBytes()
	s.cpuStart = s.cp.Usage()
	s.startCPUProfile(ctx, s.c.duration)
	s.churnStart = time.Now()
	s.churn(ctx, phase, label)
	s.settle(ctx, label+": settling")
	s.churnEnd = time.Now()
	s.cpuEnd = s.cp.Usage()
	s.rxEnd = s.fleet.RxBytes()
}

func (s *sim) scenarioChurn(ctx context.Context) error {
	s.measuredChurn(ctx, 1, "churn")
	return nil
}

// metric returns the sum of a control-plane metric's samples (name may
// carry labels: `name{label="value"}`); a metric the control plane does
// not serve is an error, not a zero.
func (s *sim) metric(name string) (float64, error) {
	v, ok := s.cp.Metric(name)
	if !ok {
		return 0, fmt.Errorf("the control plane serves no metric %s (a remote control plane needs --controlplane-metrics)", name)
	}
	return v, nil
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	default:
		return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
	}
}

func fmtMB(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func loadAvg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	fmt.Sscan(strings.TrimSpace(string(b)), &l[0], &l[1], &l[2])
	return l
}
