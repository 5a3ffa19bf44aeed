package kubeapi_test

import (
	"context"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

const namespace = "spoke-test"

func TestServer(t *testing.T) {
	start := time.Now()
	s := kubeapi.ForTest(t)
	t.Logf("kube-apiserver built (or taken from the cache) and started in %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	cs, err := kubernetes.NewForConfig(s.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("default namespace: %v", err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("Kubeconfig", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "kubeconfig")
		if err := s.WriteKubeconfig(path); err != nil {
			t.Fatal(err)
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			t.Fatal(err)
		}
		kc, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kc.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); err != nil {
			t.Fatalf("client from kubeconfig: %v", err)
		}
	})

	t.Run("WatchServiceAndEndpointSlice", func(t *testing.T) {
		services := cs.CoreV1().Services(namespace)
		endpointSlices := cs.DiscoveryV1().EndpointSlices(namespace)
		svcWatch := watchFromNow(ctx, t, services.List, services.Watch)
		sliceWatch := watchFromNow(ctx, t, endpointSlices.List, endpointSlices.Watch)

		svc, err := services.Create(ctx, newService("web"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkClusterIP(t, svc)

		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Name:   "web-1",
				Labels: map[string]string{discoveryv1.LabelServiceName: "web"},
			},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{newEndpoint("10.0.0.1")},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(corev1.ProtocolTCP)}},
		}
		if slice, err = endpointSlices.Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}

		ev := nextEvent(ctx, t, svcWatch)
		if got, ok := ev.Object.(*corev1.Service); ev.Type != watch.Added || !ok || got.UID != svc.UID {
			t.Fatalf("Service watch: got %s %T, want ADDED of web", ev.Type, ev.Object)
		}
		ev = nextEvent(ctx, t, sliceWatch)
		if got, ok := ev.Object.(*discoveryv1.EndpointSlice); ev.Type != watch.Added || !ok || got.UID != slice.UID {
			t.Fatalf("EndpointSlice watch: got %s %T, want ADDED of web-1", ev.Type, ev.Object)
		}

		slice.Endpoints = append(slice.Endpoints, newEndpoint("10.0.0.2"))
		if _, err := endpointSlices.Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		ev = nextEvent(ctx, t, sliceWatch)
		if got, ok := ev.Object.(*discoveryv1.EndpointSlice); ev.Type != watch.Modified || !ok || len(got.Endpoints) != 2 {
			t.Fatalf("EndpointSlice watch: got %s %T, want MODIFIED with 2 endpoints", ev.Type, ev.Object)
		}
	})

	t.Run("ServiceAccountToken", func(t *testing.T) {
		const audience = "spoke-agent"
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "agent"}}
		if _, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}}}
		tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, "agent", tr, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}

		status := review(ctx, t, cs, tr.Status.Token, audience)
		if !status.Authenticated || status.Error != "" {
			t.Fatalf("TokenReview: authenticated=%v error=%q, want authenticated", status.Authenticated, status.Error)
		}
		if want := "system:serviceaccount:" + namespace + ":agent"; status.User.Username != want {
			t.Errorf("TokenReview username = %q, want %q", status.User.Username, want)
		}
		if !slices.Contains(status.Audiences, audience) {
			t.Errorf("TokenReview audiences = %q, want %q", status.Audiences, audience)
		}

		if status := review(ctx, t, cs, tr.Status.Token, "someone-else"); status.Authenticated {
			t.Errorf("TokenReview for another audience authenticated %q", status.User.Username)
		}
	})

	t.Run("Restart", func(t *testing.T) {
		services := cs.CoreV1().Services(namespace)
		before, err := services.Create(ctx, newService("survivor"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w := watchFromNow(ctx, t, services.List, services.Watch)

		start := time.Now()
		if err := s.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("kube-apiserver restarted in %v", time.Since(start).Round(time.Millisecond))

		// The watch ends with the server that served it.
		for range w.ResultChan() {
		}

		after, err := services.Get(ctx, "survivor", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("Service after restart: %v", err)
		}
		if after.UID != before.UID || after.Spec.ClusterIP != before.Spec.ClusterIP {
			t.Errorf("Service after restart: uid %s clusterIP %s, want %s %s",
				after.UID, after.Spec.ClusterIP, before.UID, before.Spec.ClusterIP)
		}
		// The allocator still knows the addresses taken before the restart.
		svc, err := services.Create(ctx, newService("newcomer"), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkClusterIP(t, svc)
		if svc.Spec.ClusterIP == before.Spec.ClusterIP {
			t.Errorf("new Service got the ClusterIP %s of an existing one", svc.Spec.ClusterIP)
		}
	})

	t.Run("Stop", func(t *testing.T) {
		s.Stop()
		s.Stop() // a second call, as by the test cleanup, does nothing
		for _, raw := range []string{s.URL, s.EtcdURL} {
			u, err := url.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			if conn, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
				conn.Close()
				t.Errorf("%s still accepts connections after Stop", raw)
			}
		}
		if err := s.Restart(ctx); err == nil {
			t.Error("Restart after Stop succeeded")
		}
	})
}

// TestStartFailure shows that a kube-apiserver that cannot start is reported
// with the end of its log, and that Start cleans up after itself.
func TestStartFailure(t *testing.T) {
	ctx, bins := build(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	_, err := kubeapi.Start(ctx, kubeapi.Options{
		Binaries:           bins,
		DataDir:            dataDir,
		ExtraAPIServerArgs: []string{"--no-such-flag"},
	})
	if err == nil {
		t.Fatal("Start succeeded with an unknown flag")
	}
	if !strings.Contains(err.Error(), "unknown flag: --no-such-flag") {
		t.Errorf("error does not include kube-apiserver's complaint:\n%v", err)
	}
	if _, err := os.Stat(dataDir); err != nil {
		t.Errorf("a given data directory must be kept: %v", err)
	}
}

func TestBuildIsCached(t *testing.T) {
	ctx, first := build(t)
	start := time.Now()
	second, err := kubeapi.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("cached Build took %v", elapsed)
	}
	if first != second {
		t.Errorf("Build returned %+v, then %+v", first, second)
	}
}

// build builds kube-apiserver, or takes it from the cache, and returns the
// binaries with a context that gives the test 20 minutes in all.
func build(t *testing.T) (context.Context, kubeapi.Binaries) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	t.Cleanup(cancel)
	bins, err := kubeapi.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, bins
}

func newService(name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
}

func newEndpoint(ip string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
	}
}

// checkClusterIP checks that the server allocated svc a ClusterIP from its
// range.
func checkClusterIP(t *testing.T, svc *corev1.Service) {
	t.Helper()
	cidr := netip.MustParsePrefix(kubeapi.ServiceClusterIPRange)
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !cidr.Contains(ip) {
		t.Errorf("Service %s has ClusterIP %q, want an address in %s", svc.Name, svc.Spec.ClusterIP, cidr)
	}
}

// watchFromNow lists to learn the current resourceVersion and watches from
// there, stopping the watch when the test ends.
func watchFromNow[L interface{ GetResourceVersion() string }](
	ctx context.Context, t *testing.T,
	list func(context.Context, metav1.ListOptions) (L, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
) watch.Interface {
	t.Helper()
	l, err := list(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := watchFn(ctx, metav1.ListOptions{ResourceVersion: l.GetResourceVersion()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return w
}

func nextEvent(ctx context.Context, t *testing.T, w watch.Interface) watch.Event {
	t.Helper()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			t.Fatal("watch ended")
		}
		return ev
	case <-ctx.Done():
		t.Fatalf("waiting for a watch event: %v", ctx.Err())
	}
	panic("unreachable")
}

func review(ctx context.Context, t *testing.T, cs kubernetes.Interface, token, audience string) authenticationv1.TokenReviewStatus {
	t.Helper()
	tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{audience}}}
	tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, tr, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status
}

func ptr[T any](v T) *T { return &v }
