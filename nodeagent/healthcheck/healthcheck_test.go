package healthcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/internal/loopback"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

type answer struct {
	code int
	body response
	hdr  http.Header
}

func get(t *testing.T, port uint16) (answer, error) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	a := answer{code: resp.StatusCode, hdr: resp.Header}
	if err := json.NewDecoder(resp.Body).Decode(&a.body); err != nil {
		t.Fatalf("port %d: body: %v", port, err)
	}
	return a, nil
}

func TestServerOpensAnswersAndCloses(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s := New(Options{Host: "127.0.0.1", Healthy: healthy.Load})
	defer s.Close()
	p1, p2 := loopback.FreePort(t), loopback.FreePort(t)
	if err := s.Sync(map[uint16]Service{p1: {Key: "ns/web", LocalEndpoints: 2}, p2: {Key: "ns/empty"}}); err != nil {
		t.Fatal(err)
	}

	a, err := get(t, p1)
	if err != nil {
		t.Fatal(err)
	}
	if a.code != 200 || a.body.Service.Namespace != "ns" || a.body.Service.Name != "web" || a.body.LocalEndpoints != 2 || !a.body.ServiceProxyHealthy {
		t.Errorf("ns/web: %d %+v", a.code, a.body)
	}
	if w := a.hdr.Get("X-Load-Balancing-Endpoint-Weight"); w != "2" {
		t.Errorf("weight header %q", w)
	}
	if a, _ := get(t, p2); a.code != 503 || a.body.LocalEndpoints != 0 {
		t.Errorf("ns/empty: %d %+v", a.code, a.body)
	}

	// Counts change in place; an unhealthy agent fails every check.
	if err := s.Sync(map[uint16]Service{p1: {Key: "ns/web"}}); err != nil {
		t.Fatal(err)
	}
	if a, _ := get(t, p1); a.code != 503 || a.body.LocalEndpoints != 0 {
		t.Errorf("ns/web with no endpoints: %d %+v", a.code, a.body)
	}
	if err := s.Sync(map[uint16]Service{p1: {Key: "ns/web", LocalEndpoints: 1}}); err != nil {
		t.Fatal(err)
	}
	healthy.Store(false)
	if a, _ := get(t, p1); a.code != 503 || a.body.ServiceProxyHealthy {
		t.Errorf("unhealthy agent: %d %+v", a.code, a.body)
	}

	// The removed service's port is closed.
	if _, err := get(t, p2); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("port %d of a removed service: %v, want connection refused", p2, err)
	}
	if got := s.Ports(); !slices.Equal(got, []uint16{p1}) {
		t.Errorf("ports %v, want [%d]", got, p1)
	}
	s.Close()
	if _, err := get(t, p1); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after Close: %v, want connection refused", err)
	}
}

// A port held by someone else is reported and tried again on the next Sync.
func TestServerRetriesABusyPort(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(lis.Addr().(*net.TCPAddr).Port)
	s := New(Options{Host: "127.0.0.1"})
	defer s.Close()
	checks := map[uint16]Service{port: {Key: "ns/busy", LocalEndpoints: 1}}
	if err := s.Sync(checks); err == nil || len(s.Ports()) != 0 {
		t.Fatalf("busy port: err %v, ports %v", err, s.Ports())
	}
	lis.Close()
	if err := s.Sync(checks); err != nil {
		t.Fatal(err)
	}
	if a, err := get(t, port); err != nil || a.code != 200 {
		t.Fatalf("after the port was freed: %v %+v", err, a)
	}
}

func TestServicesTakeTheViewsCount(t *testing.T) {
	svcs := []*spokev1.Service{
		{Namespace: "ns", Name: "cluster", ClusterIps: []string{"10.96.0.1"}},
		{Namespace: "ns", Name: "local", HealthCheckNodePort: 30100, HealthCheckLocalEndpoints: 2},
		// Only terminating endpoints on this node: the view counts none.
		{Namespace: "ns", Name: "none", HealthCheckNodePort: 30101},
	}
	got := Services(svcs)
	want := map[uint16]Service{30100: {Key: "ns/local", LocalEndpoints: 2}, 30101: {Key: "ns/none"}}
	if len(got) != len(want) || got[30100] != want[30100] || got[30101] != want[30101] {
		t.Errorf("Services: %v, want %v", got, want)
	}
}
