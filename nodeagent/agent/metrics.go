package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"

	"github.com/spoke-proxy/spoke/internal/metric"
)

// Metrics are an agent's Prometheus figures. A nil *Metrics records
// nothing, so thousands of simulated agents can share none.
type Metrics struct {
	connectedGauge   prometheus.Gauge
	streamFailures   *prometheus.CounterVec
	resourcesTotal   prometheus.Counter
	nacksTotal       prometheus.Counter
	applyDuration    prometheus.Histogram
	driftTotal       prometheus.Counter
	stateWriteErrors prometheus.Counter
	corruptStates    prometheus.Counter
	unusableStates   prometheus.Counter
}

// NewMetrics registers an agent's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := metric.New(reg, "agent")
	return &Metrics{
		connectedGauge: f.Gauge("connected", "1 while the stream to the control plane is up."),
		resourcesTotal: f.Counter("resources_received_total", "Resources received from the control plane."),
		nacksTotal:     f.Counter("nacks_total", "Responses rejected in whole or in part."),
		streamFailures: f.CounterVec("stream_failures_total", "Streams to the control plane that ended (the agent then reconnects), by gRPC status code: Unavailable for a connection lost or a control plane that stopped answering keepalives.", "code"),
		// Named as kube-proxy names its sync duration, so dashboards carry over.
		applyDuration: f.HistogramOpts(prometheus.HistogramOpts{
			Namespace: "kubeproxy", Name: "sync_proxy_rules_duration_seconds",
			Help:    "Time to apply one response to the datapath.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		driftTotal:       f.Counter("drift_repairs_total", "Differences between desired and programmed state found and repaired."),
		stateWriteErrors: f.Counter("state_write_errors_total", "Failed writes of the state file."),
		corruptStates:    f.Counter("corrupt_state_files_total", "State files found corrupt and moved aside."),
		unusableStates:   f.Counter("state_file_unavailable_total", "Starts without the state file because of an I/O or permission error."),
	}
}

func (m *Metrics) connected(up bool) {
	if m == nil {
		return
	}
	if up {
		m.connectedGauge.Set(1)
	} else {
		m.connectedGauge.Set(0)
	}
}

func (m *Metrics) streamFailed(err error) {
	if m != nil {
		m.streamFailures.WithLabelValues(status.Code(err).String()).Inc()
	}
}

func (m *Metrics) received(n int) {
	if m != nil {
		m.resourcesTotal.Add(float64(n))
	}
}

func (m *Metrics) nacked() {
	if m != nil {
		m.nacksTotal.Inc()
	}
}

func (m *Metrics) applied(d time.Duration) {
	if m != nil {
		m.applyDuration.Observe(d.Seconds())
	}
}

func (m *Metrics) drift(n int) {
	if m != nil {
		m.driftTotal.Add(float64(n))
	}
}

func (m *Metrics) stateWriteError() {
	if m != nil {
		m.stateWriteErrors.Inc()
	}
}

func (m *Metrics) corruptState() {
	if m != nil {
		m.corruptStates.Inc()
	}
}

func (m *Metrics) stateUnavailable() {
	if m != nil {
		m.unusableStates.Inc()
	}
}
