package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/spoke-proxy/spoke/controlplane/app"
	"github.com/spoke-proxy/spoke/internal/apiproxy"
	"github.com/spoke-proxy/spoke/internal/background"
	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

// TestReadinessFollowsTheAPIServer: the control plane is ready once its
// first state is published, and stops being ready when the API server its
// watches follow stops answering, while it stays alive and keeps serving.
func TestReadinessFollowsTheAPIServer(t *testing.T) {
	api, client := startAPI(t)
	_, probe := runControlPlane(t, app.Options{Client: client, APIStaleAfter: 2 * time.Second})
	probe.wait(t, "synced", "/readyz", http.StatusOK, 30*time.Second)

	stopped := time.Now()
	api.Stop()
	probe.wait(t, "API server stopped", "/readyz", http.StatusServiceUnavailable, 30*time.Second)
	if took := time.Since(stopped); took > 10*time.Second {
		t.Errorf("readiness fell %v after the API server stopped, want within a few seconds of 2 s", took)
	}
	if code, body := probe.get("/livez"); code != http.StatusOK {
		t.Errorf("/livez with the API server down: %d %q; the process is alive and its datapaths' views hold", code, body)
	}
	if code, _ := probe.get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the API server down: %d", code)
	}
}

// TestReadinessFailsWhenAWatchStalls: with the API server answering every
// request but the EndpointSlice watch frozen on the way (a proxy holds its
// stream), /readyz fails within the stall bound and names the watch; once
// the stream flows again, it recovers. Changes to every kind keep the
// healthy watches hearing from the API server well within the test's short
// bound (a real one hears a bookmark about every minute).
func TestReadinessFailsWhenAWatchStalls(t *testing.T) {
	api, direct := startAPI(t)
	proxy, err := apiproxy.New(api.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	client, err := kubernetes.NewForConfig(proxy.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	churn := startChurn(ctx, t, direct)
	defer churn()

	const stallAfter = 4 * time.Second
	_, probe := runControlPlane(t, app.Options{Client: client, APIStaleAfter: 2 * time.Second, WatchStallAfter: stallAfter})
	probe.wait(t, "synced", "/readyz", http.StatusOK, 30*time.Second)
	// Ready throughout three stall bounds while every watch follows.
	for end := time.Now().Add(3 * stallAfter); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if code, body := probe.get("/readyz"); code != http.StatusOK {
			t.Fatalf("/readyz while every watch follows the API: %d %q", code, body)
		}
	}

	proxy.Freeze("endpointslices")
	frozen := time.Now()
	body := probe.wait(t, "the EndpointSlice watch frozen", "/readyz", http.StatusServiceUnavailable, 30*time.Second)
	t.Logf("/readyz failed %v after the freeze: %s", time.Since(frozen).Round(time.Millisecond), strings.TrimSpace(body))
	if !strings.Contains(body, "endpointslices") {
		t.Errorf("/readyz does not name the stalled watch: %q", body)
	}
	if proxy.Held("endpointslices") == 0 {
		t.Error("the proxy held no EndpointSlice watch: the freeze caught nothing")
	}
	if code, body := probe.get("/livez"); code != http.StatusOK {
		t.Errorf("/livez with a stalled watch: %d %q", code, body)
	}

	proxy.Thaw("endpointslices")
	probe.wait(t, "the EndpointSlice watch thawed", "/readyz", http.StatusOK, 30*time.Second)
}

// runControlPlane runs a control plane with opts on listeners of its own
// until the test ends, and returns its gRPC address and a prober of its
// HTTP endpoints.
func runControlPlane(t *testing.T, opts app.Options) (string, *prober) {
	t.Helper()
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts.GRPCListener, opts.HTTPListener = grpcLis, httpLis
	cp, err := app.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return grpcLis.Addr().String(), newProber("http://" + httpLis.Addr().String())
}

// prober asks a control plane's HTTP endpoints.
type prober struct{ base string }

func newProber(base string) *prober { return &prober{base: base} }

func (p *prober) get(path string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(p.base + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// wait polls path until it answers want and returns the body.
func (p *prober) wait(t *testing.T, what, path string, want int, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		code, body := p.get(path)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s answered %d %q, want %d", what, path, code, body, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startChurn changes a Service, an EndpointSlice and a Node every 250 ms
// until the returned function is called or the test ends.
func startChurn(ctx context.Context, t *testing.T, client kubernetes.Interface) func() {
	t.Helper()
	if _, err := client.CoreV1().Nodes().Create(ctx, newNode("churn-node", "zone-1", "192.168.0.9"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Services("default").Create(ctx, newService("default", "churn"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, newSlice("default", "churn", "10.244.9.1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return background.Every(ctx, t, 250*time.Millisecond, func(ctx context.Context, i int) {
		label := fmt.Sprintf(`{"metadata":{"labels":{"churn":"%d"}}}`, i)
		patch := []byte(label)
		// Errors are the test ending; the readiness checks tell the rest.
		client.CoreV1().Nodes().Patch(ctx, "churn-node", types.MergePatchType, patch, metav1.PatchOptions{})
		client.CoreV1().Services("default").Patch(ctx, "churn", types.MergePatchType, patch, metav1.PatchOptions{})
		client.DiscoveryV1().EndpointSlices("default").Patch(ctx, "churn-1", types.MergePatchType, patch, metav1.PatchOptions{})
	})
}

// TestNoConnectionBeforeTheFirstState: a starting control plane takes no
// gRPC connection until its first state is published (a restarted one
// would otherwise spend its start on the handshakes of every agent that
// reconnects); the connection waits and is served once it is.
func TestNoConnectionBeforeTheFirstState(t *testing.T) {
	api := kubeapi.ForTest(t)
	proxy, err := apiproxy.New(api.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	proxy.Block()
	client, err := kubernetes.NewForConfig(proxy.Config())
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, probe := runControlPlane(t, app.Options{Client: client})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	early, cancelEarly := context.WithTimeout(ctx, 2*time.Second)
	_, err = health.Check(early, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	cancelEarly()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a health check before the first state: %v, want DeadlineExceeded (no connection taken)", err)
	}

	proxy.Unblock()
	probe.wait(t, "synced", "/readyz", http.StatusOK, time.Minute)
	if resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("a health check once ready: %v, %v; want SERVING", resp, err)
	}
}
