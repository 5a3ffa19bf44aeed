package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/spoke-proxy/spoke/internal/countproxy"
)

// startCountingProxy forwards TCP connections from a local port to the API
// server at upstreamURL; its Down counts what the API server sends through
// it.
func startCountingProxy(upstreamURL string) (*countproxy.Proxy, error) {
	u, err := url.Parse(upstreamURL)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", upstreamURL, err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return countproxy.New(lis, u.Host, 10*time.Second), nil
}

// kubeProxies is the kube-proxy pattern: every node runs its own informers
// on Services, EndpointSlices and its own Node, with its own connection,
// protobuf-encoded and with kube-proxy's selectors.
type kubeProxies struct {
	cancel context.CancelFunc
	synced []cache.InformerSynced
	// stores hold every node's services and endpoint slices.
	stores []cache.Store
	wg     sync.WaitGroup
}

// proxySelector is kube-proxy's label selector for services and endpoint
// slices.
const proxySelector = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"

func startKubeProxies(cfg *rest.Config, nodes []string) (*kubeProxies, error) {
	ctx, cancel := context.WithCancel(context.Background())
	k := &kubeProxies{cancel: cancel}
	for _, node := range nodes {
		c := rest.CopyConfig(cfg)
		c.ContentType = "application/vnd.kubernetes.protobuf"
		c.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
		c.UserAgent = "kube-proxy/" + node
		c.QPS, c.Burst = -1, 0
		// A dialer of its own gives each node its own transport and
		// connection, as separate kube-proxy processes have.
		d := &net.Dialer{Timeout: 30 * time.Second}
		c.Dial = d.DialContext
		client, err := kubernetes.NewForConfig(c)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("client of %s: %w", node, err)
		}
		svcFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = proxySelector }))
		nodeFactory := informers.NewSharedInformerFactoryWithOptions(client, 0,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", node).String()
			}))
		infs := []cache.SharedIndexInformer{
			svcFactory.Core().V1().Services().Informer(),
			svcFactory.Discovery().V1().EndpointSlices().Informer(),
			nodeFactory.Core().V1().Nodes().Informer(),
		}
		for _, inf := range infs {
			k.synced = append(k.synced, inf.HasSynced)
		}
		k.stores = append(k.stores, infs[0].GetStore(), infs[1].GetStore())
		svcFactory.Start(ctx.Done())
		nodeFactory.Start(ctx.Done())
		k.wg.Go(func() {
			<-ctx.Done()
			svcFactory.Shutdown()
			nodeFactory.Shutdown()
		})
	}
	return k, nil
}

func (k *kubeProxies) WaitSynced(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), k.synced...)
}

// WaitCurrent waits until every node's informers hold the services and
// endpoint slices the API server has now, at their current versions.
func (k *kubeProxies) WaitCurrent(ctx context.Context, cfg *rest.Config) error {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{LabelSelector: proxySelector})
	if err != nil {
		return err
	}
	slices, err := client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{LabelSelector: proxySelector})
	if err != nil {
		return err
	}
	want := [2]map[string]string{{}, {}}
	for i := range svcs.Items {
		want[0][svcs.Items[i].Namespace+"/"+svcs.Items[i].Name] = svcs.Items[i].ResourceVersion
	}
	for i := range slices.Items {
		want[1][slices.Items[i].Namespace+"/"+slices.Items[i].Name] = slices.Items[i].ResourceVersion
	}
	return wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(context.Context) (bool, error) {
		for i, st := range k.stores {
			if !holds(st, want[i%2]) {
				return false, nil
			}
		}
		return true, nil
	})
}

// holds reports whether a store has exactly the objects of want (key to
// resource version).
func holds(st cache.Store, want map[string]string) bool {
	keys := st.ListKeys()
	if len(keys) != len(want) {
		return false
	}
	for _, key := range keys {
		obj, ok, _ := st.GetByKey(key)
		m, isMeta := obj.(metav1.Object)
		if !ok || !isMeta || want[key] != m.GetResourceVersion() {
			return false
		}
	}
	return true
}

func (k *kubeProxies) Stop() {
	k.cancel()
	k.wg.Wait()
}
