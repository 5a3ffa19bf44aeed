package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

const (
	namespace           = "default"
	endpointsPerService = 10
	servicePort         = 80
)

// objects are the benchmark's Services and EndpointSlices, kept in memory so
// that endpoint changes can update the slices without reading them back.
type objects struct {
	client    *kubernetes.Clientset
	mu        sync.Mutex
	slices    []*discoveryv1.EndpointSlice
	clusterIP []netip.Addr
	nextAddr  atomic.Int64
}

func serviceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// createNode creates the Node object of a benchmark node.
func createNode(ctx context.Context, c *kubernetes.Clientset, name string) error {
	n, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating node %s: %w", name, err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP.String()}}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", name, err)
	}
	return nil
}

// grow creates services until there are total, each with one TCP port and
// one EndpointSlice of 10 ready endpoints, 16 at a time.
func (o *objects) grow(ctx context.Context, total int) error {
	from := len(o.slices)
	o.slices = append(o.slices, make([]*discoveryv1.EndpointSlice, total-from)...)
	o.clusterIP = append(o.clusterIP, make([]netip.Addr, total-from)...)
	work := make(chan int)
	errc := make(chan error, 16)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range work {
				if err := o.create(ctx, i); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		})
	}
	for i := from; i < total; i++ {
		select {
		case work <- i:
		case err := <-errc:
			close(work)
			wg.Wait()
			return err
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func (o *objects) create(ctx context.Context, i int) error {
	name := serviceName(i)
	svc, err := o.client.CoreV1().Services(namespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "http", Protocol: corev1.ProtocolTCP, Port: servicePort, TargetPort: intstr.FromInt32(responderPort),
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating service %s: %w", name, err)
	}
	ready := true
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:   name + "-0",
			Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "bench-kube-proxy"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(responderPort))}},
	}
	for j := range endpointsPerService {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{endpoint(i, j).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		})
	}
	es, err = o.client.DiscoveryV1().EndpointSlices(namespace).Create(ctx, es, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating endpoint slice %s: %w", name, err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return fmt.Errorf("service %s cluster IP: %w", name, err)
	}
	o.mu.Lock()
	o.slices[i], o.clusterIP[i] = es, ip
	o.mu.Unlock()
	return nil
}

func ptr[T any](v T) *T { return &v }

// change replaces one endpoint of service i with a new address, stamping
// the slice with the last-change-trigger-time kube-proxy and the control
// plane measure programming latency from.
func (o *objects) change(ctx context.Context, i int) error {
	o.mu.Lock()
	es := o.slices[i].DeepCopy()
	o.mu.Unlock()
	k := int(o.nextAddr.Add(1))
	es.Endpoints[k%endpointsPerService].Addresses = []string{churnAddr(k).String()}
	if es.Annotations == nil {
		es.Annotations = map[string]string{}
	}
	es.Annotations[corev1.EndpointsLastChangeTriggerTime] = time.Now().UTC().Format(time.RFC3339Nano)
	es, err := o.client.DiscoveryV1().EndpointSlices(namespace).Update(ctx, es, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("updating endpoint slice of %s: %w", serviceName(i), err)
	}
	o.mu.Lock()
	o.slices[i] = es
	o.mu.Unlock()
	return nil
}

// randService picks one of the first n services.
func randService(n int) int { return rand.IntN(n) }

// churnN changes endpoints of random services among the first services at
// rate changes per second for d, each worker owning the services i with i%workers == its number so
// that no two updates of one slice race. It returns the changes made.
func (o *objects) churnN(ctx context.Context, services int, rate float64, d time.Duration) (int, error) {
	const workers = 8
	n := services
	total := int(rate * d.Seconds())
	var done atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for k := w; k < total; k += workers {
				at := start.Add(time.Duration(float64(k) / rate * float64(time.Second)))
				if d := time.Until(at); d > 0 {
					time.Sleep(d)
				}
				i := rand.IntN(n/workers)*workers + w
				if i >= n {
					i = w
				}
				if err := o.change(ctx, i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return int(done.Load()), err
	}
	return int(done.Load()), nil
}
