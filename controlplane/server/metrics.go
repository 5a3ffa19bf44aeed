package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spoke-proxy/spoke/internal/metric"
)

type metrics struct {
	connected        prometheus.Gauge
	responses        prometheus.Counter
	resources        prometheus.Counter
	nacks            prometheus.Counter
	stuckDisconnects prometheus.Counter
	rejectedStreams  *prometheus.CounterVec
	catchUps         prometheus.Counter
	initialRequests  *prometheus.CounterVec
	programming      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := metric.New(reg, "controlplane")
	return &metrics{
		connected:        f.Gauge("connected_agents", "Agent streams currently connected."),
		responses:        f.Counter("responses_sent_total", "View responses sent to agents."),
		resources:        f.Counter("resources_sent_total", "Resources sent to agents, over all responses."),
		nacks:            f.Counter("nacks_total", "Responses agents rejected."),
		stuckDisconnects: f.Counter("stuck_agent_disconnects_total", "Agents disconnected for not acknowledging a response in time."),
		rejectedStreams:  f.CounterVec("rejected_streams_total", "Streams refused before serving, by reason.", "reason"),
		catchUps: f.Counter("agent_catch_up_waits_total",
			"Streams that waited for this replica to reach the API revisions their agent already held."),
		initialRequests: f.CounterVec("initial_requests_total",
			"Agents' first requests, by what they held: versions (a list), digest_matched (a digest of their whole view) or digest_differed (a digest answered by asking for the versions).", "held"),
		programming: newProgrammingLatency(f),
	}
}
