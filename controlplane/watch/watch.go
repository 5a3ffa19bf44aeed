package watch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/store"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// Options configure a Watcher.
type Options struct {
	Client kubernetes.Interface
	Store  *store.Store
	Model  model.Options
	// Window is the quiet time that ends a burst of changes; MaxDelay bounds
	// how long a change waits. Defaults: 100ms and 1s.
	Window, MaxDelay time.Duration
	// Clock drives the debounce; the real clock when nil.
	Clock      clock.Clock
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Watcher turns API changes into store updates.
type Watcher struct {
	opts     Options
	log      *slog.Logger
	metrics  *metrics
	factory  informers.SharedInformerFactory
	services listerscorev1.ServiceLister
	nodes    listerscorev1.NodeLister
	slices   cache.Indexer
	synced   []cache.InformerSynced
	debounce *debouncer

	mu         sync.Mutex
	dirtySvcs  map[string]bool
	dirtyNodes map[string]bool
}

const byServiceIndex = "service"

// New sets up the informers; Run starts them.
func New(opts Options) (*Watcher, error) {
	if opts.Window == 0 {
		opts.Window = 100 * time.Millisecond
	}
	if opts.MaxDelay == 0 {
		opts.MaxDelay = time.Second
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{
		opts:       opts,
		log:        opts.Logger,
		metrics:    newMetrics(opts.Registerer),
		debounce:   newDebouncer(opts.Window, opts.MaxDelay, opts.Clock),
		dirtySvcs:  map[string]bool{},
		dirtyNodes: map[string]bool{},
	}
	w.factory = informers.NewSharedInformerFactoryWithOptions(opts.Client, 0, informers.WithTransform(trim))
	svcInf := w.factory.Core().V1().Services()
	sliceInf := w.factory.Discovery().V1().EndpointSlices()
	nodeInf := w.factory.Core().V1().Nodes()
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{byServiceIndex: sliceService}); err != nil {
		return nil, fmt.Errorf("adding slice index: %w", err)
	}
	w.services, w.nodes, w.slices = svcInf.Lister(), nodeInf.Lister(), sliceInf.Informer().GetIndexer()
	handlers := []struct {
		inf cache.SharedIndexInformer
		key func(any) (string, bool)
		set func(string)
	}{
		{svcInf.Informer(), objectKey, w.markService},
		{sliceInf.Informer(), func(o any) (string, bool) {
			keys, err := sliceService(tombstoneObject(o))
			return firstOf(keys), err == nil && len(keys) == 1
		}, w.markService},
		{nodeInf.Informer(), func(o any) (string, bool) {
			n, ok := tombstoneObject(o).(*corev1.Node)
			if !ok {
				return "", false
			}
			return n.Name, true
		}, w.markNode},
	}
	for _, h := range handlers {
		mark := func(o any) {
			if k, ok := h.key(o); ok {
				h.set(k)
			}
		}
		_, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    mark,
			UpdateFunc: func(old, o any) { mark(old); mark(o) },
			DeleteFunc: mark,
		})
		if err != nil {
			return nil, fmt.Errorf("adding event handler: %w", err)
		}
		w.synced = append(w.synced, h.inf.HasSynced)
	}
	return w, nil
}

// Run starts the informers, publishes the first complete state once they
// have synced, marks the store ready, and then publishes each burst of
// changes until ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	w.factory.Start(ctx.Done())
	defer w.factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), w.synced...) {
		return fmt.Errorf("informers did not sync: %w", ctx.Err())
	}
	w.log.Info("informers synced; publishing the first state")
	w.sync()
	w.opts.Store.MarkReady()
	w.debounce.Run(ctx, w.sync)
	return nil
}

func (w *Watcher) markService(key string) {
	w.mu.Lock()
	w.dirtySvcs[key] = true
	w.mu.Unlock()
	w.debounce.Trigger()
}

func (w *Watcher) markNode(name string) {
	w.mu.Lock()
	w.dirtyNodes[name] = true
	w.mu.Unlock()
	w.debounce.Trigger()
}

// sync recomputes the dirty services and nodes and publishes them as one
// batch.
func (w *Watcher) sync() {
	start := w.opts.Clock.Now()
	w.mu.Lock()
	svcs, nodes := w.dirtySvcs, w.dirtyNodes
	w.dirtySvcs, w.dirtyNodes = map[string]bool{}, map[string]bool{}
	w.mu.Unlock()
	if len(svcs) == 0 && len(nodes) == 0 {
		return
	}
	topo := w.topology()
	batch := store.Batch{Services: map[string]*model.Views{}, Nodes: map[string]*spokev1.Node{}}
	for key := range svcs {
		views := w.compute(key, topo)
		batch.Services[key] = &views
	}
	for name := range nodes {
		n, err := w.nodes.Get(name)
		if err != nil {
			batch.Nodes[name] = nil
			continue
		}
		batch.Nodes[name] = model.NodeView(n)
	}
	rev, err := w.opts.Store.Apply(batch)
	if err != nil {
		// Encoding a computed view cannot fail for valid messages; if it
		// does, retry the whole batch on the next burst.
		w.log.Error("publishing views", "err", err)
		for key := range svcs {
			w.markService(key)
		}
		return
	}
	elapsed := w.opts.Clock.Since(start)
	w.metrics.syncDuration.Observe(elapsed.Seconds())
	w.log.Debug("published views", "revision", rev, "services", len(svcs), "nodes", len(nodes), "took", elapsed)
}

func (w *Watcher) compute(key string, topo model.Topology) model.Views {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return model.Views{}
	}
	svc, err := w.services.Services(ns).Get(name)
	if err != nil {
		return model.Views{} // deleted, or not created yet
	}
	objs, err := w.slices.ByIndex(byServiceIndex, key)
	if err != nil {
		w.log.Error("listing endpoint slices", "service", key, "err", err)
	}
	slices := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			slices = append(slices, es)
		}
	}
	views, errs := model.Compute(svc, slices, topo, w.opts.Model)
	for _, err := range errs {
		w.metrics.invalid.Inc()
		w.log.Warn("skipping invalid input", "service", key, "err", err)
	}
	return views
}

func (w *Watcher) topology() model.Topology {
	nodes, _ := w.nodes.List(everything)
	t := model.Topology{Zones: make(map[string]string, len(nodes))}
	for _, n := range nodes {
		t.Zones[n.Name] = n.Labels[corev1.LabelTopologyZone]
	}
	return t
}

func objectKey(o any) (string, bool) {
	k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(o)
	return k, err == nil
}

func tombstoneObject(o any) any {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return o
}

func sliceService(o any) ([]string, error) {
	es, ok := o.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	svc := es.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + svc}, nil
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// trim drops what the model never reads before an object enters the
// informer cache: managed fields, annotations other than the trigger time,
// and for nodes everything but labels and addresses.
func trim(o any) (any, error) {
	if a, ok := o.(metav1.ObjectMetaAccessor); ok {
		m := a.GetObjectMeta()
		m.SetManagedFields(nil)
		if ann := m.GetAnnotations(); len(ann) > 0 {
			t, ok := ann[corev1.EndpointsLastChangeTriggerTime]
			m.SetAnnotations(nil)
			if ok {
				m.SetAnnotations(map[string]string{corev1.EndpointsLastChangeTriggerTime: t})
			}
		}
	}
	if n, ok := o.(*corev1.Node); ok {
		n.Status = corev1.NodeStatus{Addresses: n.Status.Addresses}
		n.Spec = corev1.NodeSpec{}
	}
	return o, nil
}
