package main

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// programRun is one cold start of a proxy.
type programRun struct {
	// ToConnect is from the proxy's start until a connection to the last
	// service reached an endpoint; a lower bound when TimedOut.
	ToConnect time.Duration
	TimedOut  bool
	// OwnSync is the proxy's own figure: kube-proxy's first full sync
	// (sync_full_proxy_rules_duration_seconds), the agent's time applying
	// responses (sync_proxy_rules_duration_seconds, summed). Unknown when
	// the proxy's metrics could not be read or held no sync: a missing
	// figure is left out, never counted as zero.
	OwnSync        time.Duration
	OwnSyncUnknown bool
	// Connect figures, at the smaller size only.
	Connect probeResult
}

// churnRun is one proxy's endpoint-change figures at one size.
type churnRun struct {
	AloneP50, AloneP99, ChurnP50, ChurnP99 float64 // seconds
	AloneCount, ChurnCount                 float64 // latencies observed
	Changes                                int
	Achieved                               float64 // changes/s
	CPU                                    float64 // seconds over the churn
	PeakRSS                                float64 // bytes over the churn
	ControlPlaneCPU, ControlPlaneRSS       float64 // Spoke only
}

// results are every figure of a run.
type results struct {
	Small, Large    int
	Program         map[string]map[int][]programRun // kind → services → rounds
	Churn           map[string]churnRun
	ChurnServices   map[string]int
	FleetBytes      uint64
	ControlBytes    uint64
	FleetNodes      int
	FleetChanges    int
	FleetCPU        float64
	FleetServices   int
	ControlPlaneCPU float64
}

func (b *bench) measure(ctx context.Context) (*results, error) {
	cfg := b.cfg
	res := &results{Small: cfg.small, Large: cfg.large, Program: map[string]map[int][]programRun{}, Churn: map[string]churnRun{}, ChurnServices: map[string]int{}}
	start := time.Now()
	b.log.Info("creating services", "services", cfg.small)
	if err := b.objs.grow(ctx, cfg.small); err != nil {
		return nil, err
	}
	b.log.Info("created", "services", cfg.small, "in", time.Since(start).Round(time.Millisecond))

	if err := b.fleet(ctx, res); err != nil {
		return nil, err
	}
	order := []string{nftables, iptables, spoke}
	if err := b.programRounds(ctx, res, cfg.small, cfg.rounds, order); err != nil {
		return nil, err
	}
	// iptables mode does not program the larger size in reasonable time:
	// its endpoint changes are measured at the smaller size.
	if err := b.churnOne(ctx, res, iptables, cfg.small); err != nil {
		return nil, err
	}
	size := cfg.small
	if cfg.large > 0 {
		size = cfg.large
		start = time.Now()
		b.log.Info("creating services", "services", cfg.large)
		if err := b.objs.grow(ctx, cfg.large); err != nil {
			return nil, err
		}
		b.log.Info("created", "services", cfg.large, "in", time.Since(start).Round(time.Millisecond))
		if err := b.programRounds(ctx, res, cfg.large, cfg.largeRounds, []string{nftables, spoke}); err != nil {
			return nil, err
		}
		if err := b.programRound(ctx, res, iptables, cfg.large, 1, cfg.iptablesTimeout); err != nil {
			return nil, err
		}
	}
	for _, kind := range []string{nftables, spoke} {
		if err := b.churnOne(ctx, res, kind, size); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// programRounds runs rounds of cold starts of each kind, interleaved, the
// order rotating from round to round.
func (b *bench) programRounds(ctx context.Context, res *results, services, rounds int, kinds []string) error {
	for r := range rounds {
		for k := range kinds {
			kind := kinds[(k+r)%len(kinds)]
			if err := b.programRound(ctx, res, kind, services, r+1, b.cfg.programTimeout); err != nil {
				return err
			}
		}
	}
	return nil
}

// newBackendNode builds a node with backends and its Node object.
func (b *bench) newBackendNode(ctx context.Context, name string) (*node, error) {
	n, err := b.newNode(name, true)
	if err != nil {
		return nil, err
	}
	return n, createNode(ctx, b.client, name)
}

// programRound starts a proxy of kind cold on a fresh node and times it
// until the last service answers.
func (b *bench) programRound(ctx context.Context, res *results, kind string, services, round int, timeout time.Duration) error {
	n, r, stop, err := b.proxyOnNewNode(ctx, kind, fmt.Sprintf("%s-%d-r%d", kind, services, round))
	if err != nil {
		return err
	}
	defer stop()
	last := addrPort(b.objs.clusterIP[services-1], servicePort)
	var run programRun
	probe, err := b.runProbe(n, "-wait", "-dst", last, "-timeout", timeout.String())
	if err != nil {
		if r.proc.Exited() {
			return fmt.Errorf("%s exited: %s", r.proc.Name, r.proc.LogTail())
		}
		run.TimedOut, run.ToConnect = true, timeout
	} else {
		run.ToConnect = probe.At.Sub(r.proc.Started)
	}
	if run.OwnSync, err = b.ownSync(ctx, r); err != nil {
		b.log.Warn("the proxy's own sync figure is unknown for this round", "proxy", kind, "err", err)
		run.OwnSyncUnknown = true
	}
	if services == b.cfg.small && !run.TimedOut {
		run.Connect, err = b.runProbe(n, "-dst", addrPort(b.objs.clusterIP[0], servicePort),
			"-direct", addrPort(endpoint(0, 0), responderPort), "-n", strconv.Itoa(b.cfg.connects))
		if err != nil {
			return err
		}
	}
	b.log.Info("programmed", "proxy", kind, "services", services, "round", round, "to_connect", run.ToConnect.Round(time.Millisecond),
		"timed_out", run.TimedOut, "own_sync", run.OwnSync.Round(time.Millisecond),
		"connect_service", run.Connect.ServiceConnect, "connect_direct", run.Connect.DirectConnect)
	if res.Program[kind] == nil {
		res.Program[kind] = map[int][]programRun{}
	}
	res.Program[kind][services] = append(res.Program[kind][services], run)
	return nil
}

// ownSync reads the proxy's own programming figure. Both kube-proxy and the
// agent record a sync once it has returned, which may be a moment after
// the rules already carry traffic: the metrics are read again for up to
// ownSyncWait until the first sync is recorded. It fails when the metrics
// cannot be read or hold no sync by then.
func (b *bench) ownSync(ctx context.Context, r *running) (time.Duration, error) {
	return awaitOwnSync(ctx, r.kind, r.scrape, ownSyncWait)
}

// ownSyncWait bounds how long after traffic flows a sync may be recorded.
const ownSyncWait = 20 * time.Second

func awaitOwnSync(ctx context.Context, kind string, scrape func(context.Context) (map[string]*dto.MetricFamily, error), wait time.Duration) (time.Duration, error) {
	name := "kubeproxy_sync_full_proxy_rules_duration_seconds"
	if kind == spoke {
		name = "kubeproxy_sync_proxy_rules_duration_seconds"
	}
	deadline := time.Now().Add(wait)
	for {
		fams, err := scrape(ctx)
		if err == nil {
			if h := histogramOf(fams, name); h.count > 0 {
				if kind == spoke {
					return seconds(h.sum), nil
				}
				return seconds(h.sum / h.count), nil
			}
			err = fmt.Errorf("%s has no observation after %s", name, wait)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// proxyOnNewNode starts a proxy of kind on a fresh backend node; stop
// stops the proxy, then removes the node.
func (b *bench) proxyOnNewNode(ctx context.Context, kind, name string) (n *node, r *running, stop func(), err error) {
	if n, err = b.newBackendNode(ctx, name); err != nil {
		return nil, nil, nil, err
	}
	if r, err = b.startProxy(kind, n); err != nil {
		b.dropNode(n)
		return nil, nil, nil, err
	}
	return n, r, func() { b.stopProxy(r); b.dropNode(n) }, nil
}

// dropNode removes a node and its Node object.
func (b *bench) dropNode(n *node) {
	if err := n.close(); err != nil {
		b.log.Warn("removing node", "node", n.name, "err", err)
	}
	for i, m := range b.nodes {
		if m == n {
			b.nodes = append(b.nodes[:i], b.nodes[i+1:]...)
			break
		}
	}
}

// programmingHistogram reads the network programming latency histogram a
// proxy kind reports: kube-proxy's own, or Spoke's control plane's.
func (b *bench) programmingHistogram(ctx context.Context, r *running) (histogram, error) {
	url, n := "http://"+metricsAddr+"/metrics", r.node
	if r.kind == spoke {
		url, n = "http://"+b.cpMetrics+"/metrics", nil
	}
	fams, err := scrapeURL(ctx, n, url)
	if err != nil {
		return histogram{}, err
	}
	return histogramOf(fams, "kubeproxy_network_programming_duration_seconds"), nil
}

// settle waits until the programming histogram has recorded want more
// latencies than before, or stopped growing for 15 s (kube-proxy records
// one latency for several changes to a service between two syncs), at
// most 3 minutes.
func (b *bench) settle(ctx context.Context, r *running, before histogram, want int) (histogram, error) {
	deadline := time.Now().Add(3 * time.Minute)
	var last histogram
	lastGrew := time.Now()
	for {
		h, err := b.programmingHistogram(ctx, r)
		if err != nil {
			return h, err
		}
		if h.count > last.count {
			last, lastGrew = h, time.Now()
		}
		if h.count-before.count >= float64(want) || time.Since(lastGrew) > 15*time.Second || time.Now().After(deadline) {
			return h, nil
		}
		time.Sleep(time.Second)
	}
}

// churnOne measures a proxy's endpoint changes at a size: one change every
// 2 s, then churnRate changes/s for churnFor, with its CPU and RSS.
func (b *bench) churnOne(ctx context.Context, res *results, kind string, services int) error {
	n, r, stop, err := b.proxyOnNewNode(ctx, kind, fmt.Sprintf("%s-%d-churn", kind, services))
	if err != nil {
		return err
	}
	defer stop()
	if _, err := b.runProbe(n, "-wait", "-dst", addrPort(b.objs.clusterIP[services-1], servicePort), "-timeout", b.cfg.programTimeout.String()); err != nil {
		return fmt.Errorf("%s before the churn: %w", kind, err)
	}
	time.Sleep(3 * time.Second)
	var run churnRun
	before, err := b.programmingHistogram(ctx, r)
	if err != nil {
		return err
	}
	for range b.cfg.aloneChanges {
		if err := b.objs.change(ctx, randService(services)); err != nil {
			return err
		}
		time.Sleep(2 * time.Second)
	}
	after, err := b.settle(ctx, r, before, b.cfg.aloneChanges)
	if err != nil {
		return err
	}
	alone := after.sub(before)
	run.AloneP50, run.AloneP99, run.AloneCount = alone.quantile(0.5), alone.quantile(0.99), alone.count

	before = after
	cpu0, cp0 := cpuSeconds(n.proxyCgroup()), cpuSeconds(b.cp.proxyCgroup())
	stopRSS := sampleRSS(r.proc, b.cp.procs[0], &run)
	start := time.Now()
	run.Changes, err = b.objs.churnN(ctx, services, b.cfg.churnRate, b.cfg.churnFor)
	run.Achieved = float64(run.Changes) / time.Since(start).Seconds()
	if err != nil {
		stopRSS()
		return err
	}
	after, err = b.settle(ctx, r, before, run.Changes)
	stopRSS()
	if err != nil {
		return err
	}
	run.CPU = cpuSeconds(n.proxyCgroup()) - cpu0
	if kind == spoke {
		run.ControlPlaneCPU = cpuSeconds(b.cp.proxyCgroup()) - cp0
	}
	churn := after.sub(before)
	run.ChurnP50, run.ChurnP99, run.ChurnCount = churn.quantile(0.5), churn.quantile(0.99), churn.count
	b.log.Info("endpoint changes", "proxy", kind, "services", services, "alone_p50", run.AloneP50, "alone_p99", run.AloneP99,
		"churn_p50", run.ChurnP50, "churn_p99", run.ChurnP99, "changes", run.Changes, "achieved_per_s", run.Achieved,
		"cpu_s", run.CPU, "peak_rss_mib", run.PeakRSS/(1<<20))
	res.Churn[kind], res.ChurnServices[kind] = run, services
	return nil
}

// sampleRSS records the peak RSS of the proxy (and of the control plane,
// for Spoke) every 250 ms until the returned function is called.
func sampleRSS(p, cp *proc, run *churnRun) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			run.PeakRSS = math.Max(run.PeakRSS, p.rssBytes())
			run.ControlPlaneRSS = math.Max(run.ControlPlaneRSS, cp.rssBytes())
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	return func() { close(stop); wg.Wait() }
}

// fleet starts cfg.fleet kube-proxies (nftables mode, each in a namespace
// of its own) and the control plane at the same time, lets them sync, makes
// endpoint changes, and counts what the API server sent each side.
func (b *bench) fleet(ctx context.Context, res *results) error {
	if err := b.startControlPlane(); err != nil {
		return err
	}
	cpu0 := cpuSeconds(b.cgroupRoot)
	var proxies []*running
	defer func() {
		for _, r := range proxies {
			b.stopProxy(r)
			b.dropNode(r.node)
		}
	}()
	b.log.Info("starting kube-proxies for the API traffic comparison", "kube_proxies", b.cfg.fleet, "services", b.cfg.small)
	for i := range b.cfg.fleet {
		name := fmt.Sprintf("fleet-%03d", i)
		n, err := b.newNode(name, false)
		if err != nil {
			return err
		}
		if err := createNode(ctx, b.client, name); err != nil {
			return err
		}
		r, err := b.startProxy(nftables, n)
		if err != nil {
			return err
		}
		proxies = append(proxies, r)
	}
	for _, r := range proxies {
		if err := r.waitSynced(ctx, 10*time.Minute); err != nil {
			return err
		}
	}
	b.log.Info("kube-proxies synced; changing endpoints", "rate", b.cfg.fleetRate, "for", b.cfg.fleetFor)
	changes, err := b.objs.churnN(ctx, b.cfg.small, b.cfg.fleetRate, b.cfg.fleetFor)
	if err != nil {
		return err
	}
	time.Sleep(10 * time.Second)
	for _, r := range proxies {
		res.FleetBytes += r.fwd.Down.Load()
	}
	res.ControlBytes = b.cpAPI.Down.Load()
	res.FleetNodes, res.FleetChanges, res.FleetServices = len(proxies), changes, b.cfg.small
	res.FleetCPU = cpuSeconds(b.cgroupRoot) - cpu0
	b.log.Info("API server bytes", "kube_proxies", len(proxies), "to_kube_proxies", res.FleetBytes, "to_control_plane", res.ControlBytes)
	return nil
}
