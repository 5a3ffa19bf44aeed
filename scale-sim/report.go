package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/spoke-proxy/spoke/datapath"
	"github.com/spoke-proxy/spoke/nodeagent/view"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
	"github.com/spoke-proxy/spoke/scale-sim/tracker"
)

// report is a run's figures.
type report struct {
	fields map[string]any
	table  [][2]string
	notes  []string
}

// finish checks convergence against the control plane and gathers the
// figures.
func (s *sim) finish(ctx context.Context) (*report, error) {
	s.progressf("checking every node's datapath against the control plane's view")
	checked, mismatched, examples, err := s.checkConverged(ctx)
	if err != nil {
		return nil, err
	}
	// The control plane's views must also be the right ones: what the
	// simulator computes on its own from the objects it made.
	held, pairs := s.tracker.Converged()
	u := s.cp.Usage()
	phase := s.tracker.Phase(1)
	h := phase.Histogram
	changes := s.changes.Load()
	endpoints := s.c.services * s.c.endpoints
	f := map[string]any{
		"scenario":  s.c.scenario,
		"nodes":     s.c.nodes,
		"zones":     s.c.zones,
		"services":  s.c.services,
		"endpoints": endpoints,
		"changes":   changes,
		"propagation_ms": map[string]float64{
			"p50": ms(h.Quantile(0.5)), "p99": ms(h.Quantile(0.99)), "max": ms(h.Max()),
		},
		"propagation_samples":       h.Count(),
		"bytes_per_node_per_change": 0.0,
		"controlplane_rss_mb":       nil,
		"controlplane_cpu_seconds":  nil,
		"converged":                 mismatched == 0 && checked == s.c.nodes && held == pairs,
		"expected_pairs_held":       held,
		"expected_pairs":            pairs,
		"mismatched_nodes":          mismatched,
		"api":                       s.c.api,
		"fleet":                     s.c.fleet,
		"controlplane":              s.c.controlplane,
		"debounce_window_ms":        ms(s.c.window),
		"debounce_max_delay_ms":     ms(s.c.maxDelay),
		"churn_per_second":          s.c.churn,
		"failed_changes":            s.failed.Load(),
		"unmatched_applies":         s.tracker.Unmatched(),
		"load_average_start":        s.loadStart[0],
		"load_average_end":          loadAvg()[0],
		"wall_seconds":              time.Since(s.started).Seconds(),
	}
	if d := s.churnEnd.Sub(s.churnStart); changes > 0 && d > 0 {
		// Phase 1 only, for the slow-agents scenario the bytes of both
		// phases over the changes of both.
		f["bytes_per_node_per_change"] = float64(s.rxEnd-s.rxStart) / float64(s.c.nodes) / float64(changes)
		f["achieved_changes_per_second"] = float64(changes) / s.c.duration.Seconds() / float64(max(1, s.phases()))
	}
	if s.c.fleet == "light" {
		f["fleet_processes"] = s.c.fleetProcesses
	}
	if a, b := s.cpuStart, s.cpuEnd; a.Known && b.Known && a.ProcessStartedAt.Equal(b.ProcessStartedAt) && h.Count() > 0 {
		// Node-updates are (node, change) pairs propagated: h's samples.
		f["controlplane_cpu_seconds_churn"] = (b.CPU - a.CPU).Seconds()
		f["controlplane_cpu_seconds_per_1000_node_updates"] = (b.CPU - a.CPU).Seconds() / (float64(h.Count()) / 1000)
	}
	if u.Known {
		f["controlplane_rss_mb"] = float64(u.RSS) / (1 << 20)
		f["controlplane_cpu_seconds"] = u.CPU.Seconds()
		if u.PeakRSS > 0 {
			f["controlplane_peak_rss_mb"] = float64(u.PeakRSS) / (1 << 20)
		}
		f["controlplane_figures_are_its_own"] = u.Own
	}
	maps.Copy(f, s.extra)
	r := &report{fields: f, notes: s.notes}
	s.tabulate(r, u, &h, convergence{checked, mismatched, held, pairs, examples})
	return r, nil
}

// convergence is what finish found when it compared the nodes' datapaths
// with the control plane's and the simulator's own views.
type convergence struct {
	checked, mismatched int
	held, pairs         int64
	examples            []string
}

// tabulate adds the table for people to a report whose fields are set.
func (s *sim) tabulate(r *report, u usage, h *tracker.Histogram, c convergence) {
	f, changes := r.fields, s.changes.Load()
	checked, mismatched, held, pairs, examples := c.checked, c.mismatched, c.held, c.pairs, c.examples
	add := func(k, v string) { r.table = append(r.table, [2]string{k, v}) }
	add("scenario", s.c.scenario)
	add("cluster", fmt.Sprintf("%d nodes in %d zones, %d services × %d endpoints (%.0f%% Local, %.0f%% zone-hinted)",
		s.c.nodes, s.c.zones, s.c.services, s.c.endpoints, 100*s.c.localFraction, 100*s.c.hintedFraction))
	add("API, control plane", fmt.Sprintf("%s, %s (debounce %s, max %s)", s.c.api, s.c.controlplane, s.c.window, s.c.maxDelay))
	if s.c.fleet == "light" {
		add("fleet", fmt.Sprintf("light agents in %d worker processes", s.c.fleetProcesses))
	}
	r.table = append(r.table, s.table...)
	if changes > 0 {
		add("changes made", fmt.Sprintf("%d at %.0f/s asked (%d failed)", changes, s.c.churn, s.failed.Load()))
		add("propagation p50 / p99 / max", fmt.Sprintf("%s / %s / %s over %d node-changes", fmtDur(h.Quantile(0.5)), fmtDur(h.Quantile(0.99)), fmtDur(h.Max()), h.Count()))
		add("bytes per node per change", fmt.Sprintf("%.1f (gRPC bytes read by agents ÷ nodes ÷ changes)", f["bytes_per_node_per_change"]))
		if v, ok := f["controlplane_cpu_seconds_per_1000_node_updates"]; ok {
			add("control-plane CPU per 1,000 node-updates", fmt.Sprintf("%.3f s (%.1f s from churn start to settled ÷ node-changes propagated)", v, f["controlplane_cpu_seconds_churn"]))
		}
	}
	if u.Known {
		who := "its own process"
		if !u.Own {
			who = "the whole simulator process"
		}
		peak := ""
		if u.PeakRSS > 0 {
			peak = fmt.Sprintf(", peak %s", fmtMB(u.PeakRSS))
		}
		add("control plane RSS, CPU", fmt.Sprintf("%s%s, %.1f s (%s)", fmtMB(u.RSS), peak, u.CPU.Seconds(), who))
	}
	add("converged", fmt.Sprintf("%v: %d/%d nodes checked against the control plane, %d mismatched; %d/%d node-service pairs hold the view the simulator expects", f["converged"], checked, s.c.nodes, mismatched, held, pairs))
	for _, e := range examples {
		r.notes = append(r.notes, "mismatch: "+e)
	}
	add("load average start / end", fmt.Sprintf("%.2f / %.2f (2 cores)", s.loadStart[0], f["load_average_end"]))
}

func (s *sim) phases() int {
	if s.c.scenario == "slow-agents" {
		return 2
	}
	return 1
}

// checkConverged compares, for every node, what its agent applied and its
// datapath holds with the control plane's view of the node: the versions
// (content hashes) of every resource, and each programmed service with the
// decoded view.
func (s *sim) checkConverged(ctx context.Context) (checked, mismatched int, examples []string, err error) {
	creds := insecure.NewCredentials()
	if s.id != nil {
		creds = credentials.NewTLS(s.id.tls)
	}
	conn, err := grpc.NewClient(s.cp.Address(), grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30)))
	if err != nil {
		return 0, 0, nil, err
	}
	defer conn.Close()
	client := spokev1.NewControlPlaneInspectionServiceClient(conn)
	var decoded sync.Map // version -> *datapath.Service
	var nChecked, nBad atomic.Int64
	var mu sync.Mutex
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= s.fleet.Len() || ctx.Err() != nil {
					return
				}
				diff := s.compareNode(ctx, client, i, &decoded)
				nChecked.Add(1)
				if diff != "" {
					nBad.Add(1)
					mu.Lock()
					if len(examples) < 5 {
						examples = append(examples, fmt.Sprintf("%s: %s", s.cluster.Nodes[i].Name, diff))
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return int(nChecked.Load()), int(nBad.Load()), examples, ctx.Err()
}

func (s *sim) compareNode(ctx context.Context, client spokev1.ControlPlaneInspectionServiceClient, i int, decoded *sync.Map) string {
	name := s.cluster.Nodes[i].Name
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if s.id != nil {
		// An agent's token reads its own node's view.
		cctx = metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer "+s.id.tokens[i])
	}
	v, err := client.GetNodeView(cctx, &spokev1.GetNodeViewRequest{NodeName: name})
	if err != nil {
		return fmt.Sprintf("control plane view: %v", err)
	}
	if s.light != nil {
		return s.compareHashes(ctx, i, v)
	}
	st, dp, err := s.full.State(ctx, i)
	if err != nil {
		return fmt.Sprintf("agent: %v", err)
	}
	want := map[string]*spokev1.Resource{}
	for _, r := range v.GetResources() {
		want[r.GetName()] = r
	}
	have := map[string]string{}
	for _, r := range st.GetCached() {
		have[r.GetName()] = r.GetVersion()
	}
	var diffs []string
	for n, r := range want {
		if have[n] != r.GetVersion() {
			diffs = append(diffs, fmt.Sprintf("%s: agent %q, control plane %q", n, have[n], r.GetVersion()))
		}
	}
	for n := range have {
		if _, ok := want[n]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: held by the agent only", n))
		}
	}
	programmed, err := dp.Programmed(ctx)
	if err != nil {
		return fmt.Sprintf("datapath: %v", err)
	}
	services := 0
	for n, r := range want {
		if n == spokev1.NodeResourceName {
			continue
		}
		services++
		d, ok := decoded.Load(r.GetVersion())
		if !ok {
			svc, err := view.Service(r)
			if err != nil {
				diffs = append(diffs, fmt.Sprintf("%s: control plane view does not decode: %v", n, err))
				continue
			}
			d, _ = decoded.LoadOrStore(r.GetVersion(), svc)
		}
		if p, ok := programmed[n]; !ok || !datapath.Equal(p, d.(*datapath.Service)) {
			diffs = append(diffs, fmt.Sprintf("%s: datapath differs from the view", n))
		}
	}
	if len(programmed) != services {
		diffs = append(diffs, fmt.Sprintf("datapath holds %d services, the view %d", len(programmed), services))
	}
	if len(diffs) == 0 {
		return ""
	}
	sort.Strings(diffs)
	return fmt.Sprintf("%d differences, first: %s", len(diffs), strings.Join(diffs[:min(3, len(diffs))], "; "))
}

// print writes the table, and with asJSON a last line with the JSON object.
func (r *report) print(w io.Writer, asJSON bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "")
	for _, row := range r.table {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	tw.Flush()
	for _, n := range r.notes {
		fmt.Fprintln(w, "note:", n)
	}
	if asJSON {
		b, _ := json.Marshal(r.fields)
		fmt.Fprintln(w, string(b))
	}
}

// Fields returns the report's JSON fields, sorted by name.
func (r *report) Fields() []string { return slices.Sorted(maps.Keys(r.fields)) }
