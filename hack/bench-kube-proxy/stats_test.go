package main

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

const sample = `# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{le="1"} 10
kubeproxy_network_programming_duration_seconds_bucket{le="2"} 30
kubeproxy_network_programming_duration_seconds_bucket{le="4"} 40
kubeproxy_network_programming_duration_seconds_bucket{le="+Inf"} 40
kubeproxy_network_programming_duration_seconds_sum 70
kubeproxy_network_programming_duration_seconds_count 40
`

func TestHistogramQuantile(t *testing.T) {
	fams, err := families(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	h := histogramOf(fams, "kubeproxy_network_programming_duration_seconds")
	for _, c := range []struct{ q, want float64 }{
		{0.25, 1},    // rank 10: the top of the first bucket
		{0.5, 1.5},   // rank 20: half way through (1, 2]
		{0.99, 3.92}, // rank 39.6: 9.6 of 10 through (2, 4]
	} {
		if got := h.quantile(c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	// What was observed after an earlier reading: 10 observations in (2, 4].
	before := histogram{bounds: h.bounds, counts: []float64{10, 30, 30, 30}, count: 30, sum: 40}
	d := h.sub(before)
	if d.count != 10 || d.quantile(0.5) != 3 {
		t.Errorf("difference: count %v, median %v; want 10 and 3", d.count, d.quantile(0.5))
	}
	if !math.IsNaN(histogramOf(fams, "missing").quantile(0.5)) {
		t.Error("the quantile of a missing histogram is not NaN")
	}
}

func TestMedianAndRatio(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median of 3 = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median of 4 = %v", m)
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(ratio(1, 0)) {
		t.Error("missing figures must give NaN")
	}
	if r := ratio(27, 0.9); math.Abs(r-30) > 1e-9 {
		t.Errorf("ratio = %v", r)
	}
}

func TestOwnSyncLeavesOutUnknownRounds(t *testing.T) {
	r := &results{Program: map[string]map[int][]programRun{"nftables": {1000: {
		{OwnSync: 2 * time.Second},
		{OwnSync: 4 * time.Second},
		{OwnSyncUnknown: true}, // metrics unreadable: not a zero
		{OwnSync: time.Second, TimedOut: true},
	}}}}
	if got := r.ownSync("nftables", 1000); got != 3 {
		t.Errorf("median own sync = %v s, want 3 (unknown and timed-out rounds left out)", got)
	}
}

// TestOwnSyncWaitsForTheFirstSync checks that a sync recorded a moment
// after the rules carry traffic is read, not reported unknown.
func TestOwnSyncWaitsForTheFirstSync(t *testing.T) {
	const synced = `# TYPE kubeproxy_sync_full_proxy_rules_duration_seconds histogram
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{le="+Inf"} 1
kubeproxy_sync_full_proxy_rules_duration_seconds_sum 0.75
kubeproxy_sync_full_proxy_rules_duration_seconds_count 1
`
	calls := 0
	scrape := func(context.Context) (map[string]*dto.MetricFamily, error) {
		calls++
		if calls < 3 {
			return families(strings.NewReader("# TYPE kubeproxy_sync_full_proxy_rules_duration_seconds histogram\n"))
		}
		return families(strings.NewReader(synced))
	}
	got, err := awaitOwnSync(context.Background(), "nftables", scrape, 10*time.Second)
	if err != nil || got != 750*time.Millisecond {
		t.Fatalf("own sync %v, %v; want 750ms once recorded", got, err)
	}
	never := func(context.Context) (map[string]*dto.MetricFamily, error) { return families(strings.NewReader("")) }
	if _, err := awaitOwnSync(context.Background(), "nftables", never, 300*time.Millisecond); err == nil {
		t.Error("a sync never recorded gave a figure")
	}
}
