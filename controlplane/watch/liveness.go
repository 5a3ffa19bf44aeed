package watch

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	apiwatch "k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
)

// The kinds the watcher follows, in the order of its positions.
const (
	kindServices = iota
	kindEndpointSlices
	kindNodes
)

// kindNames name the kinds as the API's resources do.
var kindNames = [3]string{"services", "endpointslices", "nodes"}

// hearing records, per kind, when its watch last heard from the API server:
// a list answered, a watch opened, or any event on an open watch. A bookmark
// is an event too: kube-apiserver's watch cache sends one about once a
// minute to every watch that asks for them, as client-go's reflectors do,
// and just before the watch's deadline (5 to 10 minutes), after which the
// reflector opens the next watch. A watch that is followed therefore hears
// something at least every minute or so, even when nothing changes; one that
// hears nothing for minutes is stalled, whatever the API server answers to
// other requests.
type hearing struct {
	clock clock.PassiveClock
	at    [3]atomic.Int64 // Unix nanoseconds
}

func newHearing(c clock.PassiveClock) *hearing {
	h := &hearing{clock: c}
	h.reset()
	return h
}

// reset counts every kind as heard now, when the watches start.
func (h *hearing) reset() {
	now := h.clock.Now().UnixNano()
	for i := range h.at {
		h.at[i].Store(now)
	}
}

func (h *hearing) heard(kind int) { h.at[kind].Store(h.clock.Now().UnixNano()) }

// last returns when a kind's watch last heard from the API server.
func (h *hearing) last(kind int) time.Time { return time.Unix(0, h.at[kind].Load()) }

// stalled returns the kinds not heard from for longer than after, with how
// long each has been silent.
func (h *hearing) stalled(after time.Duration) []Stall {
	var out []Stall
	now := h.clock.Now()
	for i := range h.at {
		if silent := now.Sub(h.last(i)); silent > after {
			out = append(out, Stall{Kind: kindNames[i], Silent: silent})
		}
	}
	return out
}

// Stall is a kind whose watch has heard nothing from the API server for a
// while.
type Stall struct {
	Kind   string
	Silent time.Duration
}

func (s Stall) String() string {
	return fmt.Sprintf("the %s watch has heard nothing from the API server for %s", s.Kind, s.Silent.Round(time.Second))
}

// collectors export when each kind's watch last heard from the API server.
func (h *hearing) collectors() []prometheus.Collector {
	var out []prometheus.Collector
	for i, kind := range kindNames {
		out = append(out, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "spoke", Subsystem: "controlplane", Name: "watch_last_heard_timestamp_seconds",
			Help:        "When a watch last heard from the API server (a list, a watch opened, an event or a bookmark), in seconds since the epoch.",
			ConstLabels: prometheus.Labels{"kind": kind},
		}, func() float64 { return float64(h.at[i].Load()) / 1e9 }))
	}
	return out
}

// listWatch lists and watches one kind through the client, recording in h
// what the API server answers.
func (h *hearing) listWatch(kind int,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watch func(context.Context, metav1.ListOptions) (apiwatch.Interface, error),
) *cache.ListWatch {
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			obj, err := list(ctx, opts)
			if err == nil {
				h.heard(kind)
			}
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (apiwatch.Interface, error) {
			w, err := watch(ctx, opts)
			if err != nil {
				return nil, err
			}
			h.heard(kind)
			return newHeardWatch(w, func() { h.heard(kind) }), nil
		},
	}
}

// informer returns a shared informer constructor for the factory that
// lists and watches through lw, as client-go's generated informers do
// (watch-list semantics included), indexed by namespace.
func informer(lw *cache.ListWatch, obj runtime.Object) func(kubernetes.Interface, time.Duration) cache.SharedIndexInformer {
	return func(client kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), obj,
			cache.SharedIndexInformerOptions{
				ResyncPeriod: resync,
				Indexers:     cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			})
	}
}

// heardWatch passes a watch's events on, calling heard for each.
type heardWatch struct {
	in   apiwatch.Interface
	out  chan apiwatch.Event
	done chan struct{}
	once sync.Once
}

func newHeardWatch(in apiwatch.Interface, heard func()) *heardWatch {
	w := &heardWatch{in: in, out: make(chan apiwatch.Event), done: make(chan struct{})}
	go func() {
		defer close(w.out)
		for ev := range in.ResultChan() {
			heard()
			select {
			case w.out <- ev:
			case <-w.done:
				// The reader stopped; let the source's channel close.
				for range in.ResultChan() {
				}
				return
			}
		}
	}()
	return w
}

func (w *heardWatch) ResultChan() <-chan apiwatch.Event { return w.out }

func (w *heardWatch) Stop() {
	w.once.Do(func() { close(w.done) })
	w.in.Stop()
}
