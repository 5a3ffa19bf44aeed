package chaos

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// convergeBound is the project's bound from a fault's end to every agent
// holding its view again.
const convergeBound = 5 * time.Second

// TestScenario2ControlPlaneDown: the control plane (the real binary) is
// killed and stays down while services change in the API; meanwhile one
// agent (the real binary, eBPF datapath in network namespaces) is killed
// and restarted without its state file. Its long-lived connection and new
// connections through the service never fail (no flush); once the control
// plane is back every agent holds its view within 5 s, and an agent that
// kept its state receives only what changed.
func TestScenario2ControlPlaneDown(t *testing.T) {
	n := newEBPFNode(t, "10.244.2.5", "10.244.2.6")
	outage := pick(15*time.Second, 5*time.Minute)
	ctx, cancel := context.WithTimeout(t.Context(), outage+3*time.Minute)
	defer cancel()
	api := startAPI(t)
	api.addNode(ctx, t, "s2-node-1", node1.String())
	api.addNode(ctx, t, "s2-node-2", "192.168.2.2")
	api.create(ctx, t, service("web", "10.96.22.10", 0), slice("web", "10.244.2.5", "10.244.2.6"))
	for _, name := range []string{"changes", "goes", "stays"} {
		api.create(ctx, t, service(name, "", 0), slice(name, "10.244.12.1"))
	}
	cp := newControlPlane(t, "controlplane", api.kubeconfig)
	cp.startReady(ctx)
	ag := newAgent(t, "s2-node-1", cp.grpcAddr, append(n.args, "-repair-interval", "500ms")...)
	ag.start()
	rec := &record{}
	other := runAgent(ctx, t, "s2-node-2", cp.grpcAddr, rec)
	eventually(ctx, t, "node-1 holds its view", func() error { return converged(ctx, cp, ag) })
	eventually(ctx, t, "node-2 holds its view", func() error { return agentConverged(ctx, cp, other, "s2-node-2") })
	rec.take()
	f, web := n.holdFromPod(ctx, "10.96.22.10")
	f.check(ctx, "before the outage", web)

	cp.kill()
	down := time.Now()
	api.setEndpoints(ctx, t, "changes", "10.244.12.2")
	if err := api.client.CoreV1().Services(api.ns).Delete(ctx, "goes", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	api.create(ctx, t, service("comes", "", 0), slice("comes", "10.244.12.3"))
	f.checkFor(ctx, outage/3, "control plane down", web)
	// The agent restarts with no state file while the control plane is
	// away: the datapath keeps what it holds.
	ag.kill()
	if err := os.Remove(ag.statePath); err != nil {
		t.Fatal(err)
	}
	ag.start()
	f.checkFor(ctx, time.Until(down.Add(outage)), "control plane down, agent restarted without its state file", web)
	if !ag.running() {
		t.Fatalf("the agent exited: %v", ag.err)
	}

	cp.startReady(ctx)
	back := time.Now()
	var took [2]time.Duration
	eventually(ctx, t, "every agent holds its view", func() error {
		if took[0] == 0 {
			if err := converged(ctx, cp, ag); err != nil {
				return err
			}
			took[0] = time.Since(back)
		}
		if took[1] == 0 {
			if err := agentConverged(ctx, cp, other, "s2-node-2"); err != nil {
				return err
			}
			took[1] = time.Since(back)
		}
		return nil
	})
	f.check(ctx, "after the return", web)
	for i, d := range took {
		if d > convergeBound {
			t.Errorf("node-%d held its view %v after the control plane was ready, want within %v", i+1, d.Round(time.Millisecond), convergeBound)
		}
	}
	applied, removed := rec.take()
	slices.Sort(applied)
	if want := []string{api.key("changes"), api.key("comes")}; !slices.Equal(applied, want) {
		t.Errorf("node-2 received %v, want only what changed: %v", applied, want)
	}
	if want := []string{api.key("goes")}; !slices.Equal(removed, want) {
		t.Errorf("node-2 removed %v, want %v", removed, want)
	}
	if got := ag.logLines("control-plane stream ended; reconnecting"); len(got) == 0 {
		t.Error("the agent never logged a reconnect")
	}
	t.Logf("outage %v; converged %v (node-1, restarted without state) and %v (node-2) after the return; node-2 received %v, removed %v; %d connection checks, %d failed",
		outage, took[0].Round(time.Millisecond), took[1].Round(time.Millisecond), applied, removed, f.checks, f.failures)
}
