package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/spoke-proxy/spoke/controlplane/model"
	"github.com/spoke-proxy/spoke/controlplane/store"
	"github.com/spoke-proxy/spoke/internal/loopback"
	"github.com/spoke-proxy/spoke/internal/wait"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// localService is an externalTrafficPolicy: Local service with n ready
// local endpoints on the node, as the control plane computes it.
func localService(hcPort uint16, n int) *model.Views {
	ext := &spokev1.Backends{NoEndpoints: spokev1.NoEndpoints_NO_ENDPOINTS_DROP}
	for i := range n {
		ext.Endpoints = append(ext.Endpoints, &spokev1.Endpoint{Ip: fmt.Sprintf("10.244.1.%d", 10+i), Port: 8080})
	}
	return &model.Views{Default: &spokev1.Service{Namespace: "default", Name: "lb", ClusterIps: []string{"10.96.0.20"},
		HealthCheckNodePort: uint32(hcPort), HealthCheckLocalEndpoints: uint32(n),
		Ports: []*spokev1.ServicePort{{Name: "http", Protocol: spokev1.Protocol_PROTOCOL_TCP, Port: 80, NodePort: 30081,
			Internal: &spokev1.Backends{NoEndpoints: spokev1.NoEndpoints_NO_ENDPOINTS_REJECT, Endpoints: []*spokev1.Endpoint{{Ip: "10.244.2.10", Port: 8080}}},
			External: ext}}}}
}

// httpGet returns the status and body of url, or an error if nothing
// answers.
func httpGet(url string) (int, []byte, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// settle is how long the agent may take to reach a state.
const settle = 20 * time.Second

// expectCheck waits for the health-check node port to answer code with
// localEndpoints n.
func expectCheck(t *testing.T, port uint16, code, n int) {
	t.Helper()
	wait.For(t, settle, fmt.Sprintf("health-check port %d answering %d with %d endpoints", port, code, n), func() error {
		got, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			return err
		}
		var r struct {
			Service        struct{ Namespace, Name string }
			LocalEndpoints int `json:"localEndpoints"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			return fmt.Errorf("%w: %s", err, body)
		}
		if got != code || r.LocalEndpoints != n || r.Service.Namespace != "default" || r.Service.Name != "lb" {
			return fmt.Errorf("%d %s", got, body)
		}
		return nil
	})
}

// TestAgentServesKubeProxyEndpoints runs the agent process on the memory
// datapath against a control plane in this process and checks what load
// balancers, kubelet and the e2e suite ask of kube-proxy: /healthz,
// /proxyMode, and the health-check node port of an externalTrafficPolicy
// Local service following the node's view, also after a restart with the
// control plane gone.
func TestAgentServesKubeProxyEndpoints(t *testing.T) {
	hcPort := uint16(mustPort(t))
	st := store.New()
	apply := func(v *model.Views) {
		t.Helper()
		if _, err := st.Apply(store.Batch{
			Nodes:    map[string]*spokev1.Node{"node-1": {Name: "node-1", Addresses: []string{"192.168.0.1"}}},
			Services: map[string]*model.Views{"default/lb": v},
		}); err != nil {
			t.Fatal(err)
		}
	}
	apply(localService(hcPort, 2))
	st.MarkReady()
	gs, cpAddr := serveViews(t, st, "127.0.0.1:0")

	agent := &agentProcess{t: t, healthz: loopback.FreeAddr(t)}
	metrics := loopback.FreeAddr(t)
	agent.args = []string{
		"-node-name", "node-1", "-controlplane", cpAddr, "-insecure", "-datapath", "memory",
		"-state-file", filepath.Join(t.TempDir(), "state.db"), "-repair-interval", "1s",
		"-healthz-address", agent.healthz, "-metrics-address", metrics, "-inspect-address", loopback.FreeAddr(t),
	}
	agent.start()
	defer func() { agent.kill() }()

	wait.For(t, settle, "/healthz", func() error {
		code, body, err := httpGet("http://" + agent.healthz + "/healthz")
		if err != nil {
			return err
		}
		var h struct{ LastUpdated, CurrentTime time.Time }
		if err := json.Unmarshal(body, &h); err != nil {
			return err
		}
		if code != 200 || h.LastUpdated.IsZero() || h.CurrentTime.Before(h.LastUpdated) {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if code, body, err := httpGet("http://" + metrics + "/proxyMode"); err != nil || code != 200 || string(body) != "memory" {
		t.Errorf("/proxyMode: %d %q %v", code, body, err)
	}

	expectCheck(t, hcPort, 200, 2)
	apply(localService(hcPort, 0))
	expectCheck(t, hcPort, 503, 0)
	apply(localService(hcPort, 1))
	expectCheck(t, hcPort, 200, 1)

	// Restarted with no control plane, the agent serves the check from its
	// state file.
	gs.Stop()
	agent.kill()
	agent.start()
	expectCheck(t, hcPort, 200, 1)
	serveViews(t, st, cpAddr)

	// Removed from the view, the service's port closes.
	apply(nil)
	wait.For(t, settle, "the removed service's port closing", func() error {
		if _, _, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", hcPort)); err == nil {
			return fmt.Errorf("port %d still answers", hcPort)
		}
		return nil
	})
}

func mustPort(t *testing.T) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(loopback.FreeAddr(t))
	var n int
	fmt.Sscan(p, &n)
	return n
}
