package store

import (
	"log/slog"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spoke-proxy/spoke/internal/metric"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Options configure a store.
type Options struct {
	// MaxViewBytes is the largest framed view published; a service with a
	// larger one is rejected. Zero or above spokev1.MaxViewBytes means
	// spokev1.MaxViewBytes, which every agent can receive.
	MaxViewBytes int
	// Registerer receives the store's metrics; none when nil.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Rejection is a service held back because one of its views is too large
// to send. Agents keep whatever version of it they last received.
type Rejection struct {
	Name string
	// Bytes is the framed size of its largest view; Limit the maximum.
	Bytes, Limit int
}

// limits holds back services whose views no agent could receive. Guarded
// by the store's lock.
type limits struct {
	maxView  int
	rejected map[string]Rejection
	total    *prometheus.CounterVec
	current  prometheus.Gauge
	// bytes names each held-back service with its view's size: a series
	// per service held back, removed when it is sent again or deleted.
	bytes *prometheus.GaugeVec
	log   *slog.Logger
}

func newLimits(opts Options) limits {
	f := metric.New(opts.Registerer, "controlplane")
	l := limits{
		maxView:  opts.MaxViewBytes,
		rejected: make(map[string]Rejection),
		total:    f.CounterVec("views_rejected_total", "Service views held back from agents, by reason.", "reason"),
		current:  f.Gauge("rejected_services", "Services currently held back from agents."),
		bytes: f.GaugeVec("held_back_view_bytes",
			"Size of the largest view of each service held back from agents for exceeding the per-view limit.", "service"),
		log: opts.Logger,
	}
	if l.maxView <= 0 || l.maxView > spokev1.MaxViewBytes {
		l.maxView = spokev1.MaxViewBytes
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	return l
}

// admit reports whether a service whose largest new view has the given
// framed size may be published, and records the outcome.
func (l *limits) admit(name string, size int) bool {
	if size <= l.maxView {
		l.accept(name)
		return true
	}
	r := Rejection{Name: name, Bytes: size, Limit: l.maxView}
	if l.rejected[name] == r {
		return false // already counted and logged
	}
	l.rejected[name] = r
	l.total.WithLabelValues("too_large").Inc()
	l.current.Set(float64(len(l.rejected)))
	l.bytes.WithLabelValues(name).Set(float64(size))
	l.log.Error("service view too large; not sent to agents, which keep their previous version",
		"service", name, "bytes", size, "limit", l.maxView)
	return false
}

// accept forgets a service's rejection, if any.
func (l *limits) accept(name string) {
	if _, ok := l.rejected[name]; !ok {
		return
	}
	delete(l.rejected, name)
	l.current.Set(float64(len(l.rejected)))
	l.bytes.DeleteLabelValues(name)
	l.log.Info("service view back within the limit; sending it again", "service", name)
}

func (l *limits) list() []Rejection {
	out := make([]Rejection, 0, len(l.rejected))
	for _, r := range l.rejected {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
