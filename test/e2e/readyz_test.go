package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/spoke-proxy/spoke/controlplane/app"
	"github.com/spoke-proxy/spoke/internal/kubeapi"
)

// TestReadinessFollowsTheAPIServer: the control plane is ready once its
// first state is published, and stops being ready when the API server its
// watches follow stops answering, while it stays alive and keeps serving.
func TestReadinessFollowsTheAPIServer(t *testing.T) {
	api := kubeapi.ForTest(t)
	client, err := kubernetes.NewForConfig(api.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	grpcLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := app.New(app.Options{Client: client, GRPCListener: grpcLis, HTTPListener: httpLis, APIStaleAfter: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	base := "http://" + httpLis.Addr().String()
	get := func(path string) (int, string) {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	wait := func(what, path string, want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, body := get(path)
			if code == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s answered %d %q, want %d", what, path, code, body, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	wait("synced", "/readyz", http.StatusOK)

	stopped := time.Now()
	api.Stop()
	wait("API server stopped", "/readyz", http.StatusServiceUnavailable)
	if took := time.Since(stopped); took > 10*time.Second {
		t.Errorf("readiness fell %v after the API server stopped, want within a few seconds of 2 s", took)
	}
	if code, body := get("/livez"); code != http.StatusOK {
		t.Errorf("/livez with the API server down: %d %q; the process is alive and its datapaths' views hold", code, body)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the API server down: %d", code)
	}
}
