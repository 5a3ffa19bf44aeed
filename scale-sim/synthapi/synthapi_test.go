package synthapi

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

func pod(name, account string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: AgentNamespace, Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: account, NodeName: "node-" + name}}
}

// TestPodsBySelectedAccount checks that an informer selecting pods by
// ServiceAccount, as the control plane's, lists and watches only those, and
// that other selectors are refused.
func TestPodsBySelectedAccount(t *testing.T) {
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	for _, p := range []*corev1.Pod{pod("a", "spoke-agent"), pod("b", "other")} {
		if err := s.Set(p); err != nil {
			t.Fatal(err)
		}
	}
	client := kubernetes.NewForConfigOrDie(s.RESTConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(AgentNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.serviceAccountName", "spoke-agent").String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("not synced")
	}
	for _, p := range []*corev1.Pod{pod("c", "spoke-agent"), pod("d", "other")} {
		if err := s.Set(p); err != nil {
			t.Fatal(err)
		}
	}
	for {
		keys := inf.GetStore().ListKeys()
		if len(keys) == 2 {
			for _, k := range keys {
				if k != AgentNamespace+"/a" && k != AgentNamespace+"/c" {
					t.Fatalf("the informer holds %v, want only the spoke-agent pods a and c", keys)
				}
			}
			break
		}
		if len(keys) > 2 || ctx.Err() != nil {
			t.Fatalf("the informer holds %v, want only the spoke-agent pods a and c", keys)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := client.CoreV1().Pods(AgentNamespace).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"}); err == nil {
		t.Error("a list with another field selector was answered")
	}
}
