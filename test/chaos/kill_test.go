package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestScenario1KilledDuringApplies: the agent (the real binary, eBPF
// datapath in network namespaces) is killed with SIGKILL at a random
// moment after large changes reach the API, over and over. Each time its
// state file passes bbolt's check, the restarted agent holds its view
// (content, programmed services, no drift, so no orphan) within 5 s, and a
// long-lived connection through a service, and new ones, never fail.
func TestScenario1KilledDuringApplies(t *testing.T) {
	n := newEBPFNode(t, "10.244.1.5", "10.244.1.6")
	iterations, bulk := pick(4, 100), pick(4, 10)
	ctx, cancel := context.WithTimeout(t.Context(), pick(3*time.Minute, 20*time.Minute))
	defer cancel()
	api := startAPI(t)
	api.addNode(ctx, t, "s1-node-1", node1.String())
	api.create(ctx, t, service("web", "10.96.11.10", 0), slice("web", "10.244.1.5", "10.244.1.6"))
	for i := range bulk {
		name := fmt.Sprintf("bulk-%d", i)
		api.create(ctx, t, service(name, "", 0), slice(name, bulkEndpoints(i)...))
	}
	cp := newControlPlane(t, "controlplane", api.kubeconfig)
	cp.startReady(ctx)
	ag := newAgent(t, "s1-node-1", cp.grpcAddr, append(n.args, "-repair-interval", "200ms")...)
	ag.start()
	eventually(ctx, t, "the agent holds its view", func() error { return converged(ctx, cp, ag) })
	f, web := n.holdFromPod(ctx, "10.96.11.10")
	f.check(ctx, "before any kill", web)

	var slowest time.Duration
	for it := range iterations {
		// Every bulk service changes at once: a large apply.
		var wg sync.WaitGroup
		for i := range bulk {
			wg.Go(func() { api.setEndpoints(ctx, t, fmt.Sprintf("bulk-%d", i), bulkEndpoints(it*bulk+i+bulk)...) })
		}
		wg.Wait()
		time.Sleep(rand.N(400 * time.Millisecond))
		ag.kill()
		f.check(ctx, fmt.Sprintf("iteration %d, agent killed", it+1), web)
		if err := checkBolt(ag.statePath); err != nil {
			t.Fatalf("iteration %d: the state file fails its check: %v", it+1, err)
		}
		ag.start()
		restarted := time.Now()
		if err := within(ctx, convergeBound, func() error { return converged(ctx, cp, ag) }); err != nil {
			t.Fatalf("iteration %d: %v after the restart: %v", it+1, convergeBound, err)
		}
		slowest = max(slowest, time.Since(restarted))
		f.check(ctx, fmt.Sprintf("iteration %d, restarted", it+1), web)
		if t.Failed() {
			return
		}
	}
	t.Logf("%d kills during applies of %d services of 400 endpoints: state file checked each time, the view held at most %v after a restart; %d connection checks, %d failed",
		iterations, bulk, slowest.Round(time.Millisecond), f.checks, f.failures)
}

// checkBolt runs bbolt's consistency check on the file at path.
func checkBolt(path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		var first error
		for err := range tx.Check() {
			if first == nil {
				first = err
			}
		}
		return first
	})
}
