package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"text/tabwriter"
	"time"
)

// toConnect is the median time to program at a size, in seconds, and
// whether any round timed out (the figure is then a lower bound).
func (r *results) toConnect(kind string, services int) (float64, bool) {
	var xs []float64
	timedOut := false
	for _, run := range r.Program[kind][services] {
		xs = append(xs, run.ToConnect.Seconds())
		timedOut = timedOut || run.TimedOut
	}
	return median(xs), timedOut
}

func (r *results) ownSync(kind string, services int) float64 {
	var xs []float64
	for _, run := range r.Program[kind][services] {
		if !run.TimedOut && !run.OwnSyncUnknown {
			xs = append(xs, run.OwnSync.Seconds())
		}
	}
	return median(xs)
}

// connect returns the median connect times through the service and
// direct, and the round trips, in microseconds.
func (r *results) connect(kind string) (svc, direct, svcRTT, directRTT float64) {
	var s, d, sr, dr []float64
	for _, run := range r.Program[kind][r.Small] {
		if run.Connect.ServiceConnect == 0 {
			continue
		}
		s = append(s, us(run.Connect.ServiceConnect))
		d = append(d, us(run.Connect.DirectConnect))
		sr = append(sr, us(run.Connect.ServiceRTT))
		dr = append(dr, us(run.Connect.DirectRTT))
	}
	return median(s), median(d), median(sr), median(dr)
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// summary is the final JSON line.
func (r *results) summary() map[string]any {
	out := map[string]any{"services_small": r.Small, "services_large": r.Large}
	spokeSmall, _ := r.toConnect(spoke, r.Small)
	spokeLarge, _ := r.toConnect(spoke, r.Large)
	nftSmall, _ := r.toConnect(nftables, r.Small)
	nftLarge, _ := r.toConnect(nftables, r.Large)
	iptSmall, _ := r.toConnect(iptables, r.Small)
	iptLarge, iptTimedOut := r.toConnect(iptables, r.Large)
	out["program_1k_vs_nftables"] = num(ratio(nftSmall, spokeSmall))
	out["program_1k_vs_iptables"] = num(ratio(iptSmall, spokeSmall))
	out["program_10k_vs_nftables"] = num(ratio(nftLarge, spokeLarge))
	out["program_10k_vs_iptables"] = num(ratio(iptLarge, spokeLarge))
	out["program_10k_vs_iptables_is_lower_bound"] = iptTimedOut

	sp := r.Churn[spoke]
	out["endpoint_change_vs_nftables"] = num(ratio(r.Churn[nftables].ChurnP99, sp.ChurnP99))
	out["endpoint_change_vs_iptables"] = num(ratio(r.Churn[iptables].ChurnP99, sp.ChurnP99))
	out["endpoint_change_alone_p99_vs_nftables"] = num(ratio(r.Churn[nftables].AloneP99, sp.AloneP99))
	out["endpoint_change_services"] = r.ChurnServices[spoke]
	out["endpoint_change_iptables_services"] = r.ChurnServices[iptables]
	for _, kind := range []string{spoke, nftables, iptables} {
		s, d, _, _ := r.connect(kind)
		out["connect_overhead_"+kind] = num(ratio(s, d))
	}
	out["cpu_seconds_vs_nftables"] = num(ratio(r.Churn[nftables].CPU, sp.CPU))
	out["apiserver_bytes_ratio"] = num(ratio(float64(r.FleetBytes), float64(r.ControlBytes)))
	out["kube_proxy_nodes"] = r.FleetNodes
	return out
}

// num makes NaN (a figure not measured) JSON null.
func num(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return math.Round(f*1000) / 1000
}

func (r *results) print(w io.Writer, cfg config) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nprogram from cold (median of rounds; start → connection to the last service reaches an endpoint; own metric)\n")
	fmt.Fprintf(tw, "services\tproxy\trounds\tto connect (s)\town sync metric (s)\tkube-proxy / Spoke\n")
	for _, n := range []int{r.Small, r.Large} {
		sp, _ := r.toConnect(spoke, n)
		for _, kind := range []string{nftables, iptables, spoke} {
			runs := r.Program[kind][n]
			if len(runs) == 0 {
				continue
			}
			t, timedOut := r.toConnect(kind, n)
			bound := ""
			if timedOut {
				bound = ">"
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s%.3f\t%.3f\t%s%.1f\n", n, kind, len(runs), bound, t, r.ownSync(kind, n), bound, ratio(t, sp))
		}
	}
	fmt.Fprintf(tw, "\nendpoint changes: network_programming_duration_seconds (kube-proxy's; Spoke's control plane's), seconds\n")
	fmt.Fprintf(tw, "proxy\tservices\talone p50\talone p99\tchurn p50\tchurn p99\tchanges (achieved/s)\tCPU s\tpeak RSS MiB\n")
	for _, kind := range []string{nftables, iptables, spoke} {
		c, ok := r.Churn[kind]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.3f\t%.3f\t%.3f\t%d (%.1f)\t%.1f\t%.0f\n", kind, r.ChurnServices[kind],
			c.AloneP50, c.AloneP99, c.ChurnP50, c.ChurnP99, c.Changes, c.Achieved, c.CPU, c.PeakRSS/(1<<20))
		if kind == spoke {
			fmt.Fprintf(tw, "spoke control plane\t\t\t\t\t\t\t%.1f\t%.0f\n", c.ControlPlaneCPU, c.ControlPlaneRSS/(1<<20))
		}
	}
	fmt.Fprintf(tw, "\nconnect through a ClusterIP vs direct to the endpoint (%d services, median µs)\n", r.Small)
	fmt.Fprintf(tw, "proxy\tconnect svc\tconnect direct\toverhead\tround trip svc\tround trip direct\n")
	for _, kind := range []string{nftables, iptables, spoke} {
		s, d, sr, dr := r.connect(kind)
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.2f\t%.0f\t%.0f\n", kind, s, d, ratio(s, d), sr, dr)
	}
	fmt.Fprintf(tw, "\nAPI server bytes out, %d services, %d endpoint changes\n", r.FleetServices, r.FleetChanges)
	fmt.Fprintf(tw, "%d kube-proxies (nftables)\t%.1f MiB\t(%.2f MiB each)\n", r.FleetNodes, float64(r.FleetBytes)/(1<<20), float64(r.FleetBytes)/(1<<20)/float64(max(r.FleetNodes, 1)))
	fmt.Fprintf(tw, "Spoke control plane\t%.2f MiB\n", float64(r.ControlBytes)/(1<<20))
	tw.Flush()
	line, _ := json.Marshal(r.summary())
	fmt.Fprintf(w, "%s\n", line)
}
