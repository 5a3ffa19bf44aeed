// Package metric makes Spoke's Prometheus metrics: each component's are
// named spoke_<subsystem>_<name> and registered as they are made, so that
// none is made and forgotten at registration.
//
// Caveats: metrics that keep kube-proxy's names (kubeproxy_*) are made with
// the Opts methods, which take the full options.
package metric

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Factory makes one subsystem's metrics and registers them with its
// registerer; with a nil registerer it registers nothing, for tests and
// for components whose figures nobody reads.
type Factory struct {
	auto      promauto.Factory
	subsystem string
}

// New returns the factory of subsystem's metrics, registered with reg.
func New(reg prometheus.Registerer, subsystem string) Factory {
	return Factory{auto: promauto.With(reg), subsystem: subsystem}
}

// Counter makes the counter spoke_<subsystem>_<name>.
func (f Factory) Counter(name, help string) prometheus.Counter {
	return f.auto.NewCounter(prometheus.CounterOpts(f.opts(name, help)))
}

// CounterVec makes the counter spoke_<subsystem>_<name> with labels.
func (f Factory) CounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return f.auto.NewCounterVec(prometheus.CounterOpts(f.opts(name, help)), labels)
}

// Gauge makes the gauge spoke_<subsystem>_<name>.
func (f Factory) Gauge(name, help string) prometheus.Gauge {
	return f.auto.NewGauge(prometheus.GaugeOpts(f.opts(name, help)))
}

// GaugeVec makes the gauge spoke_<subsystem>_<name> with labels.
func (f Factory) GaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return f.auto.NewGaugeVec(prometheus.GaugeOpts(f.opts(name, help)), labels)
}

// Histogram makes the histogram spoke_<subsystem>_<name>.
func (f Factory) Histogram(name, help string, buckets []float64) prometheus.Histogram {
	o := f.opts(name, help)
	return f.auto.NewHistogram(prometheus.HistogramOpts{
		Namespace: o.Namespace, Subsystem: o.Subsystem, Name: o.Name, Help: o.Help, Buckets: buckets,
	})
}

// HistogramOpts makes a histogram named by opts alone.
func (f Factory) HistogramOpts(opts prometheus.HistogramOpts) prometheus.Histogram {
	return f.auto.NewHistogram(opts)
}

func (f Factory) opts(name, help string) prometheus.Opts {
	return prometheus.Opts{Namespace: "spoke", Subsystem: f.subsystem, Name: name, Help: help}
}
