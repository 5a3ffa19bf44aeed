package server

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	connected        prometheus.Gauge
	responses        prometheus.Counter
	resources        prometheus.Counter
	nacks            prometheus.Counter
	stuckDisconnects prometheus.Counter
	rejectedStreams  *prometheus.CounterVec
	catchUps         prometheus.Counter
	programming      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "connected_agents",
			Help: "Agent streams currently connected.",
		}),
		responses: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "responses_sent_total",
			Help: "View responses sent to agents.",
		}),
		resources: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "resources_sent_total",
			Help: "Resources sent to agents, over all responses.",
		}),
		nacks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "nacks_total",
			Help: "Responses agents rejected.",
		}),
		stuckDisconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "stuck_agent_disconnects_total",
			Help: "Agents disconnected for not acknowledging a response in time.",
		}),
		rejectedStreams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "rejected_streams_total",
			Help: "Streams refused before serving, by reason.",
		}, []string{"reason"}),
		catchUps: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "agent_catch_up_waits_total",
			Help: "Streams that waited for this replica to reach the API revisions their agent already held.",
		}),
		programming: newProgrammingLatency(),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.responses, m.resources, m.nacks, m.stuckDisconnects, m.rejectedStreams, m.catchUps, m.programming)
	}
	return m
}
