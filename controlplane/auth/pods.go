package auth

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// AgentPods is a watched cache of the agents' pods, so that binding a
// stream to its node reads no pod from the API server: a herd of agents
// reconnecting after a control-plane restart costs one list and one watch
// per agent ServiceAccount, not one request per agent.
type AgentPods struct {
	stores map[string][]cache.Store // by namespace, one per ServiceAccount
	synced chan struct{}            // closed once every first list is in
}

// WatchAgentPods watches the pods of each "namespace/name" ServiceAccount
// (a field selector on spec.serviceAccountName, so other pods of the
// namespace are neither sent nor held) until ctx ends. It returns at once:
// the first list runs beside the control plane's other informers, and
// binding a stream waits for it (see get).
func WatchAgentPods(ctx context.Context, client kubernetes.Interface, serviceAccounts []string) (*AgentPods, error) {
	p := &AgentPods{stores: map[string][]cache.Store{}, synced: make(chan struct{})}
	var synced []cache.InformerSynced
	for _, account := range serviceAccounts {
		ns, name, ok := strings.Cut(account, "/")
		if !ok || ns == "" || name == "" {
			return nil, fmt.Errorf("agent ServiceAccount %q: want namespace/name", account)
		}
		factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("spec.serviceAccountName", name).String()
			}))
		inf := factory.Core().V1().Pods().Informer()
		if err := inf.SetTransform(podIdentity); err != nil {
			return nil, err
		}
		p.stores[ns] = append(p.stores[ns], inf.GetStore())
		synced = append(synced, inf.HasSynced)
		factory.Start(ctx.Done())
	}
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), synced...) {
			close(p.synced)
		}
	}()
	return p, nil
}

// WaitSynced waits until the first list of every watch is in, or ctx ends.
func (p *AgentPods) WaitSynced(ctx context.Context) error {
	select {
	case <-p.synced:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the agents' pods are not listed yet: %w", ctx.Err())
	}
}

// podIdentity keeps only what binding needs: a pod of a large DaemonSet
// costs a few hundred bytes instead of kilobytes.
func podIdentity(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, ResourceVersion: pod.ResourceVersion},
		Spec:       corev1.PodSpec{NodeName: pod.Spec.NodeName, ServiceAccountName: pod.Spec.ServiceAccountName},
	}, nil
}

// get returns the cached pod ns/name, if any, once the first list is in:
// a herd of agents reconnecting to a control plane that has just started
// waits for one list instead of reading a pod each.
func (p *AgentPods) get(ctx context.Context, ns, name string) (*corev1.Pod, bool, error) {
	if err := p.WaitSynced(ctx); err != nil {
		return nil, false, err
	}
	for _, s := range p.stores[ns] {
		if obj, ok, _ := s.GetByKey(ns + "/" + name); ok {
			return obj.(*corev1.Pod), true, nil
		}
	}
	return nil, false, nil
}
