package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/spoke-proxy/spoke/scale-sim/tracker"
)

// scenarioControlPlaneRestart restarts the control plane with every agent
// connected and nothing changed, and measures how long until every agent
// has reconnected and acknowledged its first response, and how many
// resources were sent again.
func (s *sim) scenarioControlPlaneRestart(ctx context.Context) error {
	s.tracker.ResetActivity()
	rx := s.fleet.RxBytes()
	s.progressf("controlplane-restart: restarting the control plane with %d agents connected", s.fleet.Len())
	requestsBefore, requestsKnown := s.api.Requests()
	t0 := time.Now()
	restartCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := s.cp.Restart(restartCtx); err != nil {
		return err
	}
	readyAfter := time.Since(t0)
	if s.c.churn == 0 || s.c.duration == 0 {
		// Nothing to measure after the herd: profile the herd itself.
		s.startCPUProfile(ctx, 20*time.Second)
	}
	deadline := time.Now().Add(2 * time.Minute)
	lastProgress := time.Now()
	var last time.Time
	missing := 0
	for {
		missing, last = 0, time.Time{}
		for i := range s.fleet.Len() {
			a := s.tracker.Activity(i)
			if a.Responses == 0 {
				missing++
				continue
			}
			if a.FirstResponse.After(last) {
				last = a.FirstResponse
			}
		}
		if missing == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		if time.Since(lastProgress) >= s.c.progressEvery {
			s.progressf("controlplane-restart: %d/%d agents reconnected and acknowledged", s.fleet.Len()-missing, s.fleet.Len())
			lastProgress = time.Now()
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.herdFigures(t0) // first: its CPU figure is read as every agent is served
	var resent uint64
	for i := range s.fleet.Len() {
		resent += s.tracker.Activity(i).Resources
	}
	if err := s.restartAuthFigures(requestsBefore, requestsKnown); err != nil {
		return err
	}
	all := last.Sub(t0)
	if missing > 0 {
		s.note("controlplane-restart: %d agents had not reconnected after 2 minutes", missing)
		all = -1
	}
	s.extra["reconnect_all_ms"] = ms(all)
	s.extra["controlplane_ready_after_restart_ms"] = ms(readyAfter)
	s.extra["resources_resent"] = resent
	s.extra["agents_not_reconnected"] = missing
	s.extra["bytes_after_restart"] = s.fleet.RxBytes() - rx
	s.table = append(s.table,
		[2]string{"control plane ready after restart", fmtDur(readyAfter)},
		[2]string{"every agent reconnected and acked", fmtDur(all)},
		[2]string{"resources resent (agents' count)", fmt.Sprint(resent)},
		[2]string{"bytes to agents after restart", fmt.Sprint(s.fleet.RxBytes() - rx)})
	if err := s.heldFigures(); err != nil {
		return err
	}
	if s.c.churn > 0 && s.c.duration > 0 {
		s.measuredChurn(ctx, 1, "churn after restart")
	}
	return nil
}

// heldFigures reports what the new control plane sent and to how many
// agents, and how the agents told it what they held: the digest of their
// versions once they know it reads digests.
func (s *sim) heldFigures() error {
	cpResent, err := s.metric("spoke_controlplane_resources_sent_total")
	if err != nil {
		return err
	}
	connected, err := s.metric("spoke_controlplane_connected_agents")
	if err != nil {
		return err
	}
	// A kind no agent used has no series; a control plane with none at
	// all does not count them, and saying 0 would be wrong.
	var held [3]float64
	found := false
	for i, kind := range []string{"versions", "digest_matched", "digest_differed"} {
		v, ok := s.cp.Metric(`spoke_controlplane_initial_requests_total{held="` + kind + `"`)
		held[i], found = v, found || ok
		s.extra["initial_requests_"+kind] = v
	}
	if !found {
		return fmt.Errorf("the control plane serves no metric spoke_controlplane_initial_requests_total")
	}
	s.extra["controlplane_resources_sent_after_restart"] = cpResent
	s.extra["controlplane_connected_agents"] = connected
	s.table = append(s.table, [2]string{"resources sent by the new control plane", fmt.Sprint(cpResent)},
		[2]string{"agents connected to it", fmt.Sprint(connected)},
		[2]string{"first requests with versions / digest matched / digest differed", fmt.Sprintf("%.0f / %.0f / %.0f", held[0], held[1], held[2])})
	return nil
}

// herdFigures reports how the reconnecting agents were spread: when they
// were served (from the restart), how many streams the control plane
// refused for its rate of new streams, how far the served agents ever got
// ahead of what its token bucket allows (none, when the limit holds: no
// agent is served before its stream is admitted), and the new control
// plane's peak RSS against its memory limit.
func (s *sim) herdFigures(t0 time.Time) {
	var served []time.Duration
	for i := range s.fleet.Len() {
		if a := s.tracker.Activity(i); a.Responses > 0 {
			served = append(served, a.FirstResponse.Sub(t0))
		}
	}
	slices.Sort(served)
	if len(served) > 0 {
		at := func(q float64) float64 { return ms(served[int(q*float64(len(served)-1))]) }
		s.extra["reconnect_ms"] = map[string]float64{"p10": at(0.1), "p50": at(0.5), "p90": at(0.9), "max": at(1)}
		s.table = append(s.table, [2]string{"agents served after restart, p10 / p50 / p90 / max",
			fmt.Sprintf("%.0f / %.0f / %.0f / %.0f ms", at(0.1), at(0.5), at(0.9), at(1))})
	}
	l := s.c.limits()
	s.extra["new_streams_per_second"] = l.NewStreamsPerSecond
	if l.NewStreamsPerSecond > 0 {
		// The bucket was created after t0 and starts full: by time t at
		// most burst + rate·t streams were admitted.
		ahead := 0
		for i, t := range served {
			ahead = max(ahead, i+1-l.NewStreamsBurst-int(l.NewStreamsPerSecond*t.Seconds()))
		}
		refused, _ := s.cp.Metric(`spoke_controlplane_rejected_streams_total{reason="rate"`)
		s.extra["new_streams_burst"] = l.NewStreamsBurst
		s.extra["streams_refused_by_rate"] = refused
		s.extra["served_ahead_of_rate_limit"] = ahead
		s.table = append(s.table, [2]string{"new-stream limit; streams refused by it; agents served ahead of it",
			fmt.Sprintf("%.0f/s, burst %d; %.0f; %d", l.NewStreamsPerSecond, l.NewStreamsBurst, refused, ahead)})
	}
	if u := s.cp.Usage(); u.Own && u.PeakRSS > 0 {
		s.extra["controlplane_cpu_seconds_to_serve_all"] = u.CPU.Seconds()
		s.table = append(s.table, [2]string{"new control plane's CPU from its start until every agent was served", fmt.Sprintf("%.1f s", u.CPU.Seconds())})
		peak := float64(u.PeakRSS) / (1 << 20)
		s.extra["controlplane_peak_rss_after_restart_mb"] = peak
		limit := "none"
		if s.c.cpMemoryLimitMiB > 0 {
			s.extra["controlplane_memory_limit_mib"] = s.c.cpMemoryLimitMiB
			limit = fmt.Sprintf("%d MiB (GOMEMLIMIT)", s.c.cpMemoryLimitMiB)
		}
		s.table = append(s.table, [2]string{"new control plane's peak RSS; its memory limit", fmt.Sprintf("%.0f MiB; %s", peak, limit)})
	}
}

// restartAuthFigures reports what binding the reconnected agents cost: the
// new control plane's token checks by method, and the requests the API
// received from the restart until every agent was served (its informers'
// lists and watches, the issuer's keys, and nothing per agent).
func (s *sim) restartAuthFigures(requestsBefore uint64, requestsKnown bool) error {
	s.extra["auth"] = s.c.auth
	if !s.c.auth {
		s.table = append(s.table, [2]string{"agent authentication", "off (--auth=false)"})
		return nil
	}
	const checks = "spoke_controlplane_agent_token_checks_total"
	var local, reviewed, refused float64
	for _, m := range []struct {
		v      *float64
		labels string
	}{{&local, `{method="local",result="ok"}`}, {&reviewed, `{method="tokenreview",result="ok"}`}, {&refused, `{method="local",result="rejected"}`}} {
		var err error
		if *m.v, err = s.metric(checks + m.labels); err != nil {
			return err
		}
	}
	s.extra["agent_tokens_verified_locally"] = local
	s.extra["agent_tokens_reviewed"] = reviewed
	s.extra["agent_tokens_refused"] = refused
	s.table = append(s.table,
		[2]string{"agent authentication", "TLS + pod-bound tokens, verified against the issuer's keys"},
		[2]string{"tokens verified locally / by TokenReview / refused", fmt.Sprintf("%.0f / %.0f / %.0f", local, reviewed, refused)})
	if requestsKnown {
		after, _ := s.api.Requests()
		n := after - requestsBefore
		s.extra["api_requests_during_restart"] = n
		s.extra["api_requests_per_agent"] = float64(n) / float64(s.fleet.Len())
		s.table = append(s.table, [2]string{"API requests from restart to every agent served", fmt.Sprintf("%d (%.4f per agent)", n, float64(n)/float64(s.fleet.Len()))})
	}
	return nil
}

// scenarioAgentRestart restarts a fraction of the agents one after another:
// each opens its bbolt file and programs a fresh datapath from it before it
// reconnects.
func (s *sim) scenarioAgentRestart(ctx context.Context) error {
	n := max(1, int(float64(s.fleet.Len())*s.c.fraction))
	order := rand.New(rand.NewPCG(s.c.seed, 7)).Perm(s.fleet.Len())[:n]
	s.tracker.ResetActivity()
	var ready tracker.Histogram
	var readies []time.Duration
	s.progressf("agent-restart: restarting %d agents", n)
	for k, i := range order {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.fleet.Stop(i)
		d, err := s.fleet.Start(i)
		if err != nil {
			return err
		}
		ready.Record(d)
		readies = append(readies, d)
		if (k+1)%100 == 0 {
			s.progressf("agent-restart: %d/%d restarted, ready p99 so far %s", k+1, n, fmtDur(ready.Quantile(0.99)))
		}
	}
	s.settle(ctx, "agent-restart: resyncing")
	var resent uint64
	for _, i := range order {
		resent += s.tracker.Activity(i).Resources
	}
	slices.Sort(readies)
	s.extra["restarted_agents"] = n
	s.extra["restart_ready_ms"] = map[string]float64{"p50": ms(ready.Quantile(0.5)), "p99": ms(ready.Quantile(0.99)), "max": ms(ready.Max())}
	s.extra["resources_resent_to_restarted"] = resent
	s.table = append(s.table,
		[2]string{"agents restarted", fmt.Sprint(n)},
		[2]string{"ready from bbolt p50 / p99 / max", fmt.Sprintf("%s / %s / %s", fmtDur(ready.Quantile(0.5)), fmtDur(ready.Quantile(0.99)), fmtDur(ready.Max()))},
		[2]string{"resources resent to restarted agents", fmt.Sprint(resent)})
	if s.c.churn > 0 && s.c.duration > 0 {
		s.measuredChurn(ctx, 1, "churn after restarts")
	}
	return nil
}

// scenarioSlowAgents churns twice with the same settings: first with every
// agent reading at full speed, then with a fraction reading slowly, and
// compares the healthy agents' propagation latency.
func (s *sim) scenarioSlowAgents(ctx context.Context) error {
	n := int(float64(s.fleet.Len()) * s.c.fraction)
	slow := rand.New(rand.NewPCG(s.c.seed, 11)).Perm(s.fleet.Len())[:n]
	for _, i := range slow {
		s.tracker.SetClass(i, tracker.Slow)
	}
	s.rxStart = s.fleet.RxBytes()
	s.churnStart = time.Now()
	s.churn(ctx, 1, "slow-agents: without slow agents")
	s.settle(ctx, "slow-agents: settling")
	for _, i := range slow {
		s.full.SetSlow(i, s.c.slowRate)
	}
	s.progressf("slow-agents: %d agents now read %d bytes/s", n, s.c.slowRate)
	s.churn(ctx, 2, "slow-agents: with slow agents")
	for _, i := range slow {
		s.full.SetSlow(i, 0)
	}
	s.settle(ctx, "slow-agents: settling")
	s.churnEnd = time.Now()
	s.rxEnd = s.fleet.RxBytes()
	without := s.tracker.Phase(1, tracker.Healthy).Histogram
	with := s.tracker.Phase(2, tracker.Healthy).Histogram
	slowH := s.tracker.Phase(2, tracker.Slow).Histogram
	stuck, err := s.metric("spoke_controlplane_stuck_agent_disconnects_total")
	if err != nil {
		return err
	}
	s.extra["slow_agents"] = n
	s.extra["healthy_p99_ms_without_slow"] = ms(without.Quantile(0.99))
	s.extra["healthy_p99_ms_with_slow"] = ms(with.Quantile(0.99))
	s.extra["slow_p99_ms"] = ms(slowH.Quantile(0.99))
	s.extra["stuck_agent_disconnects"] = stuck
	s.table = append(s.table,
		[2]string{"slow agents", fmt.Sprintf("%d, reading %d B/s", n, s.c.slowRate)},
		[2]string{"healthy p99 without / with slow agents", fmt.Sprintf("%s / %s", fmtDur(without.Quantile(0.99)), fmtDur(with.Quantile(0.99)))},
		[2]string{"slow agents' p99 (with)", fmtDur(slowH.Quantile(0.99))},
		[2]string{"stuck agents disconnected", fmt.Sprint(stuck)})
	return nil
}

// scenarioAPIServerLoad runs the kube-proxy pattern next to Spoke against
// the same API server: every node also runs its own informers. It counts
// what the API server sends to Spoke's control plane and to the per-node
// informers, through the initial lists and the churn.
func (s *sim) scenarioAPIServerLoad(ctx context.Context) error {
	restCfg := s.api.RESTConfig()
	proxy, err := startCountingProxy(restCfg.Host)
	if err != nil {
		return err
	}
	defer proxy.Close()
	restCfg.Host = "https://" + proxy.Addr()
	names := make([]string, len(s.cluster.Nodes))
	for i, n := range s.cluster.Nodes {
		names[i] = n.Name
	}
	s.progressf("apiserver-load: starting %d nodes' informers (the kube-proxy pattern)", len(names))
	spokeBefore := s.spokeProxy.Down.Load()
	kp, err := startKubeProxies(restCfg, names)
	if err != nil {
		return err
	}
	defer kp.Stop()
	syncCtx, cancel := context.WithTimeout(ctx, s.c.syncTimeout)
	defer cancel()
	if !kp.WaitSynced(syncCtx) {
		return fmt.Errorf("the per-node informers did not sync: %w", syncCtx.Err())
	}
	perNodeInitial := proxy.Down.Load()
	spokeStart, perNodeStart := s.spokeProxy.Down.Load(), proxy.Down.Load()
	s.measuredChurn(ctx, 1, "apiserver-load")
	// The last watch events reach every informer before the counters are
	// read.
	// Asked directly, not through the counting proxy.
	currentCtx, cancelCurrent := context.WithTimeout(ctx, s.c.syncTimeout)
	defer cancelCurrent()
	if err := kp.WaitCurrent(currentCtx, s.api.RESTConfig()); err != nil {
		return fmt.Errorf("the per-node informers did not catch up with the churn: %w", err)
	}
	spokeChurn, perNodeChurn := s.spokeProxy.Down.Load()-spokeStart, proxy.Down.Load()-perNodeStart
	spokeTotal, perNodeTotal := s.spokeProxy.Down.Load(), proxy.Down.Load()
	s.extra["apiserver_bytes_spoke"] = spokeTotal
	s.extra["apiserver_bytes_per_node_watch"] = perNodeTotal
	s.extra["apiserver_bytes_ratio"] = ratio(perNodeTotal, spokeTotal)
	s.extra["apiserver_bytes_spoke_churn"] = spokeChurn
	s.extra["apiserver_bytes_per_node_watch_churn"] = perNodeChurn
	s.extra["apiserver_bytes_ratio_churn"] = ratio(perNodeChurn, spokeChurn)
	s.extra["apiserver_bytes_spoke_initial"] = spokeBefore
	s.extra["apiserver_bytes_per_node_watch_initial"] = perNodeInitial
	s.table = append(s.table,
		[2]string{"API server → Spoke control plane (1 watch set)", fmt.Sprintf("%s (initial %s, churn %s)", fmtBytes(spokeTotal), fmtBytes(spokeBefore), fmtBytes(spokeChurn))},
		[2]string{fmt.Sprintf("API server → %d per-node informer sets", len(names)), fmt.Sprintf("%s (initial %s, churn %s)", fmtBytes(perNodeTotal), fmtBytes(perNodeInitial), fmtBytes(perNodeChurn))},
		[2]string{"ratio per-node / Spoke (all, churn only)", fmt.Sprintf("%.0f×, %.0f×", ratio(perNodeTotal, spokeTotal), ratio(perNodeChurn, spokeChurn))})
	s.note("apiserver-load: bytes are TLS bytes on the wire from the API server, counted by a TCP proxy in front of it; the per-node informers use protobuf as kube-proxy does, the control plane client-go's default (JSON)")
	return nil
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func ms(d time.Duration) float64 {
	if d < 0 {
		return -1
	}
	return float64(d.Microseconds()) / 1000
}

func fmtBytes(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}
