package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/internal/metric"
)

// newProgrammingLatency returns kube-proxy's network_programming_duration_seconds
// under its own name, so that the in-cluster network programming latency
// SLO and its dashboards carry over: the time from an EndpointSlice's
// last-change-trigger-time to a node's agent acknowledging the view that
// holds the change, once per node, as kube-proxy observes it once per node.
// Its buckets are kube-proxy's, with finer ones below 250 ms.
func newProgrammingLatency(f metric.Factory) prometheus.Histogram {
	buckets := []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5}
	buckets = append(buckets, prometheus.LinearBuckets(1, 1, 59)...)
	buckets = append(buckets, prometheus.LinearBuckets(60, 5, 12)...)
	buckets = append(buckets, prometheus.LinearBuckets(120, 30, 7)...)
	return f.HistogramOpts(prometheus.HistogramOpts{
		Namespace: "kubeproxy", Name: "network_programming_duration_seconds",
		Help:    "In Cluster Network Programming Latency in seconds: from an EndpointSlice's last-change-trigger-time to the node's agent acknowledging the view that holds it.",
		Buckets: buckets,
	})
}

// observeProgrammed records the programming latency of the acknowledged
// resources that carry a trigger time and changed while the stream was
// connected (after revision connected): content sent on (re)connection
// may be arbitrarily old and says nothing about programming latency.
func observeProgrammed(h prometheus.Histogram, acked []*store.Encoded, connected uint64, now time.Time) {
	for _, r := range acked {
		if r.Trigger.IsZero() || r.Rev <= connected {
			continue
		}
		h.Observe(max(now.Sub(r.Trigger), 0).Seconds())
	}
}

// inFlightResources returns the resources of the response in flight.
func (c *conn) inFlightResources() []*store.Encoded {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inFlightPart.resources
}
