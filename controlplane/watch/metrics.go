package watch

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spoke-proxy/spoke/internal/metric"
)

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
	f := metric.New(reg, "controlplane")
	return &metrics{
		syncDuration: f.Histogram("sync_proxy_rules_duration_seconds",
			"Time to compute and publish one batch of changed views.", prometheus.ExponentialBuckets(0.0001, 2, 18)),
		lastSync: f.Gauge("sync_proxy_rules_last_timestamp_seconds",
			"When views were last published, in seconds since the epoch."),
		lastQueued: f.Gauge("sync_proxy_rules_last_queued_timestamp_seconds",
			"When a change was last queued for computation, in seconds since the epoch."),
		endpointChanges:  f.Counter("sync_proxy_rules_endpoint_changes_total", "EndpointSlice changes seen."),
		endpointsPending: f.Gauge("sync_proxy_rules_endpoint_changes_pending", "Services with EndpointSlice changes not yet computed."),
		serviceChanges:   f.Counter("sync_proxy_rules_service_changes_total", "Service changes seen."),
		servicesPending:  f.Gauge("sync_proxy_rules_service_changes_pending", "Services with changes not yet computed."),
		invalid: f.CounterVec("invalid_input_total",
			"Parts of API objects skipped because they are invalid, by object kind.", "kind"),
		views: f.CounterVec("views_computed_total",
			"Views computed, by the group of nodes they serve (default, zone, node).", "group"),
		topologyRecomputes: f.Counter("topology_recomputes_total",
			"Services recomputed because the zone of a node they have a view for changed."),
	}
}
