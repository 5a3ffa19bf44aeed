package auth

import (
	"context"
	"fmt"
	"strings"
	"time"

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
	synced []cache.InformerSynced
}

// WatchAgentPods watches the pods of each "namespace/name" ServiceAccount
// (a field selector on spec.serviceAccountName, so other pods of the
// namespace are neither sent nor held) until ctx ends, and waits at most
// timeout for the first list.
func WatchAgentPods(ctx context.Context, client kubernetes.Interface, serviceAccounts []string, timeout time.Duration) (*AgentPods, error) {
	p := &AgentPods{stores: map[string][]cache.Store{}}
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
		p.synced = append(p.synced, inf.HasSynced)
		factory.Start(ctx.Done())
	}
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !cache.WaitForCacheSync(waitCtx.Done(), p.synced...) {
		return nil, fmt.Errorf("the agents' pods were not listed within %s", timeout)
	}
	return p, nil
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

// get returns the cached pod ns/name, if any.
func (p *AgentPods) get(ns, name string) (*corev1.Pod, bool) {
	for _, s := range p.stores[ns] {
		if obj, ok, _ := s.GetByKey(ns + "/" + name); ok {
			return obj.(*corev1.Pod), true
		}
	}
	return nil, false
}
