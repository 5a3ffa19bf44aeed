package watch

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
)

var everything = labels.Everything()

type metrics struct {
	syncDuration prometheus.Histogram
	invalid      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "sync_views_duration_seconds",
			Help:    "Time to compute and publish one batch of changed views.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "invalid_input_total",
			Help: "Fields of API objects skipped because they are invalid.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.syncDuration, m.invalid)
	}
	return m
}
