package chaos

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/apiproxy"
	"github.com/spoke-proxy/spoke/internal/background"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// record is every change an agent applied, in order.
type record struct {
	mu      sync.Mutex
	applied []string // names, one per resource applied
	removed []string
	// onAdd, when set, also sees each response's resources as applied.
	onAdd func(applied []*spokev1.Resource)
}

func (r *record) add(applied []*spokev1.Resource, removed []string) {
	if r.onAdd != nil {
		r.onAdd(applied)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range applied {
		r.applied = append(r.applied, a.GetName())
	}
	r.removed = append(r.removed, removed...)
}

// removedSoFar reports whether name was recorded as removed since the
// last take. The agent reports a response once it has applied it, so its
// state may show the change a moment before the record does.
func (r *record) removedSoFar(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.removed, name)
}

// take returns what was recorded since the last take.
func (r *record) take() (applied, removed []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	applied, removed = r.applied, r.removed
	r.applied, r.removed = nil, nil
	return applied, removed
}

// runAgent runs an agent of node in this process, on the in-memory
// datapath, recording what it applies.
func runAgent(ctx context.Context, t *testing.T, node, cpAddr string, rec *record) *agent.Agent {
	t.Helper()
	return runAgentWith(ctx, t, node, cpAddr, rec, filepath.Join(t.TempDir(), node+".db"))
}

// runAgentWith is runAgent with its state file at statePath ("" for none).
func runAgentWith(ctx context.Context, t *testing.T, node, cpAddr string, rec *record, statePath string) *agent.Agent {
	t.Helper()
	conn, err := grpc.NewClient(cpAddr, append(agent.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Options{NodeName: node, Conn: conn, Datapath: memory.New(memory.Options{}),
		StatePath: statePath, RepairInterval: time.Second,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, OnApplied: rec.add})
	if err != nil {
		t.Fatal(err)
	}
	stop := background.Run(ctx, t, "agent "+node, a.Run)
	t.Cleanup(func() {
		stop()
		conn.Close()
	})
	return a
}

// agentConverged returns nil once an in-process agent holds its node's
// view and nothing is in flight.
func agentConverged(ctx context.Context, cp *controlPlane, a *agent.Agent, node string) error {
	view, err := cp.view(ctx, node)
	if err != nil {
		return err
	}
	st, err := a.GetState(ctx, &spokev1.GetStateRequest{})
	if err != nil {
		return err
	}
	if d := diff(versions(st.GetCached()), view); d != "" {
		return fmt.Errorf("%s differs from its view: %s", node, d)
	}
	ns, err := cp.status(ctx, node)
	if err != nil {
		return err
	}
	if ns.GetPendingNonce() != "" {
		return fmt.Errorf("response %s in flight", ns.GetPendingNonce())
	}
	return nil
}

// TestScenario4APIServerRestartAndGone: the kube-apiserver is restarted
// under the control plane (the real binary), then made unreachable while a
// Service is deleted and another changed, and the control plane's watches
// are answered 410 Gone when they come back, so that it must list again.
// The agent must never be sent an empty or partial view: across both
// faults it applies exactly the one change and the one removal, then holds
// its view.
func TestScenario4APIServerRestartAndGone(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), pick(3*time.Minute, 10*time.Minute))
	defer cancel()
	api := startAPI(t)
	proxy, err := apiproxy.New(api.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	kubeconfig := filepath.Join(t.TempDir(), "proxy.kubeconfig")
	if err := proxy.WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	const node = "s4-node-1"
	api.addNode(ctx, t, node, "192.168.4.1")
	services := pick(20, 200)
	for i := range services {
		name := fmt.Sprintf("svc-%d", i)
		api.create(ctx, t, service(name, "", 0), slice(name, fmt.Sprintf("10.244.4.%d", i%250+1)))
	}
	api.create(ctx, t, service("doomed", "", 0), slice("doomed", "10.244.5.1"))
	cp := newControlPlane(t, "controlplane", kubeconfig)
	cp.startReady(ctx)
	rec := &record{}
	a := runAgent(ctx, t, node, cp.grpcAddr, rec)
	eventually(ctx, t, "first sync", func() error {
		if err := agentConverged(ctx, cp, a, node); err != nil {
			return err
		}
		if view, _ := cp.view(ctx, node); len(view) < services+1 {
			return fmt.Errorf("the view has %d resources, want the %d services and more", len(view), services+1)
		}
		return nil
	})
	if _, removed := rec.take(); len(removed) != 0 {
		t.Fatalf("the first sync removed %v", removed)
	}

	if view, _ := cp.view(ctx, node); view[api.key("doomed")] == "" {
		t.Fatalf("the first view lacks %s", api.key("doomed"))
	}
	// The API server restarts: the watches end and start again.
	restarts := pick(1, 5)
	for i := range restarts {
		if err := api.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		eventually(ctx, t, fmt.Sprintf("ready after API server restart %d", i+1), func() error {
			if code, body := cp.get("/readyz"); code != 200 {
				return fmt.Errorf("/readyz %d %s", code, body)
			}
			return agentConverged(ctx, cp, a, node)
		})
	}
	// Long enough for a watch that came back empty to have been published.
	time.Sleep(time.Second)
	if applied, removed := rec.take(); len(applied)+len(removed) != 0 {
		t.Fatalf("after %d API server restarts with nothing changed, the agent applied %d and removed %v", restarts, len(applied), head(removed))
	}

	// Unreachable while a Service goes and another changes; then 410 Gone.
	viewBefore, err := cp.view(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	proxy.Block()
	if err := api.client.CoreV1().Services(api.ns).Delete(ctx, "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := api.client.DiscoveryV1().EndpointSlices(api.ns).Delete(ctx, "doomed-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	api.setEndpoints(ctx, t, "svc-0", "10.244.6.1")
	time.Sleep(pick(2*time.Second, 10*time.Second))
	for _, r := range []string{"services", "endpointslices", "nodes"} {
		proxy.Gone(r, 1)
	}
	proxy.Unblock()
	eventually(ctx, t, "resync after 410 Gone", func() error {
		if err := agentConverged(ctx, cp, a, node); err != nil {
			return err
		}
		// Each kind's watch comes back on its own time.
		view, err := cp.view(ctx, node)
		if err != nil {
			return err
		}
		if view[api.key("doomed")] != "" {
			return fmt.Errorf("the view still has %s", api.key("doomed"))
		}
		if view[api.key("svc-0")] == viewBefore[api.key("svc-0")] {
			return fmt.Errorf("the view has %s as before the outage", api.key("svc-0"))
		}
		if !rec.removedSoFar(api.key("doomed")) {
			return fmt.Errorf("the agent has not reported removing %s yet", api.key("doomed"))
		}
		return nil
	})
	for _, r := range []string{"services", "endpointslices"} {
		if proxy.GoneSent(r) == 0 {
			t.Errorf("no %s watch met 410 Gone: the relist was not forced", r)
		}
	}
	applied, removed := rec.take()
	slices.Sort(applied)
	applied = slices.Compact(applied)
	// Each kind's watch lists again on its own: when the EndpointSlices
	// come back before the Services, the doomed service is seen for a
	// moment without its slice (its view changes) before it goes. That is
	// the API's state as each watch saw it, not a partial view.
	applied = slices.DeleteFunc(applied, func(name string) bool { return name == api.key("doomed") })
	if want := []string{api.key("doomed")}; !slices.Equal(removed, want) {
		t.Errorf("removed %v, want exactly %v: a partial or empty view was pushed", head(removed), want)
	}
	if want := []string{api.key("svc-0")}; !slices.Equal(applied, want) {
		t.Errorf("applied %v, want only %v", head(applied), want)
	}
	t.Logf("%d services; %d API server restarts: nothing applied or removed; outage with 410 Gone on %d services and %d endpointslices watches: removed %v, applied %v",
		services+1, restarts, proxy.GoneSent("services"), proxy.GoneSent("endpointslices"), removed, applied)
}
