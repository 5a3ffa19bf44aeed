package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
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
	m := &Metrics{
		connectedGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "spoke", Subsystem: "agent", Name: "connected",
			Help: "1 while the stream to the control plane is up.",
		}),
		streamFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "agent", Name: "stream_failures_total",
			Help: "Streams to the control plane that ended (the agent then reconnects), by gRPC status code: Unavailable for a connection lost or a control plane that stopped answering keepalives.",
		}, []string{"code"}),
		resourcesTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "agent", Name: "resources_received_total",
			Help: "Resources received from the control plane.",
		}),
		nacksTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "agent", Name: "nacks_total",
			Help: "Responses rejected in whole or in part.",
		}),
		// Named as kube-proxy names its sync duration, so dashboards carry over.
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "kubeproxy", Name: "sync_proxy_rules_duration_seconds",
			Help:    "Time to apply one response to the datapath.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		driftTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "agent", Name: "drift_repairs_total",
			Help: "Differences between desired and programmed state found and repaired.",
		}),
		stateWriteErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "agent", Name: "state_write_errors_total",
			Help: "Failed writes of the state file.",
		}),
		corruptStates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "agent", Name: "corrupt_state_files_total",
			Help: "State files found corrupt and moved aside.",
		}),
		unusableStates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "agent", Name: "state_file_unavailable_total",
			Help: "Starts without the state file because of an I/O or permission error.",
		}),
	}
	reg.MustRegister(m.connectedGauge, m.streamFailures, m.resourcesTotal, m.nacksTotal, m.applyDuration, m.driftTotal, m.stateWriteErrors, m.corruptStates, m.unusableStates)
	return m
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
