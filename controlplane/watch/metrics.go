package watch

import "github.com/prometheus/client_golang/prometheus"

// metrics are the watcher's figures. They carry kube-proxy's
// sync_proxy_rules_* names under the spoke_controlplane prefix: the
// meaning is the same (changes seen, queued and turned into rules), but
// here one computation serves every node, so they must not be summed with
// the agents' kubeproxy_* figures.
type metrics struct {
	syncDuration       prometheus.Histogram
	lastSync           prometheus.Gauge
	lastQueued         prometheus.Gauge
	endpointChanges    prometheus.Counter
	endpointsPending   prometheus.Gauge
	serviceChanges     prometheus.Counter
	servicesPending    prometheus.Gauge
	invalid            *prometheus.CounterVec
	views              *prometheus.CounterVec
	topologyRecomputes prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "spoke", "controlplane"
	m := &metrics{
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "sync_proxy_rules_duration_seconds",
			Help:    "Time to compute and publish one batch of changed views.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "sync_proxy_rules_last_timestamp_seconds",
			Help: "When views were last published, in seconds since the epoch.",
		}),
		lastQueued: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "sync_proxy_rules_last_queued_timestamp_seconds",
			Help: "When a change was last queued for computation, in seconds since the epoch.",
		}),
		endpointChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "sync_proxy_rules_endpoint_changes_total",
			Help: "EndpointSlice changes seen.",
		}),
		endpointsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "sync_proxy_rules_endpoint_changes_pending",
			Help: "Services with EndpointSlice changes not yet computed.",
		}),
		serviceChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "sync_proxy_rules_service_changes_total",
			Help: "Service changes seen.",
		}),
		servicesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "sync_proxy_rules_service_changes_pending",
			Help: "Services with changes not yet computed.",
		}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "invalid_input_total",
			Help: "Parts of API objects skipped because they are invalid, by object kind.",
		}, []string{"kind"}),
		views: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "views_computed_total",
			Help: "Views computed, by the group of nodes they serve (default, zone, node).",
		}, []string{"group"}),
		topologyRecomputes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "topology_recomputes_total",
			Help: "Services recomputed because the zone of a node they have a view for changed.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.syncDuration, m.lastSync, m.lastQueued, m.endpointChanges, m.endpointsPending,
			m.serviceChanges, m.servicesPending, m.invalid, m.views, m.topologyRecomputes)
	}
	return m
}
