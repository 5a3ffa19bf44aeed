package chaos

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// applies counts, per node, how often a service was applied and when last.
type applies struct {
	mu    sync.Mutex
	name  string
	count map[string]int
	last  map[string]time.Time
}

func (a *applies) recorder(node string) *record {
	r := &record{}
	r.onAdd = func(applied []*spokev1.Resource) {
		for _, res := range applied {
			if res.GetName() == a.name {
				a.mu.Lock()
				a.count[node]++
				a.last[node] = time.Now()
				a.mu.Unlock()
			}
		}
	}
	return r
}

// wait waits until every node applied the service want times, and
// returns the latest of their last applies.
func (a *applies) wait(ctx context.Context, nodes []string, want int) (time.Time, error) {
	err := within(ctx, 0, func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, n := range nodes {
			if a.count[n] < want {
				return fmt.Errorf("%s applied %s %d times, want %d", n, a.name, a.count[n], want)
			}
		}
		return nil
	})
	a.mu.Lock()
	defer a.mu.Unlock()
	var latest time.Time
	for _, n := range nodes {
		if a.last[n].After(latest) {
			latest = a.last[n]
		}
	}
	return latest, err
}

// TestScenario5StuckAgent: many agents run under churn, then one more
// stream opens and never reads. The others' propagation (change in the API
// to every agent applied) stays what it was, the control plane's memory
// stays bounded, and the stuck stream is closed after the
// acknowledgement deadline and counted.
func TestScenario5StuckAgent(t *testing.T) {
	agents, changes := pick(40, 300), pick(6, 30)
	ctx, cancel := context.WithTimeout(t.Context(), pick(3*time.Minute, 10*time.Minute))
	defer cancel()
	api := startAPI(t)
	var nodes []string
	for i := range agents {
		nodes = append(nodes, fmt.Sprintf("s5-node-%d", i))
		api.addNode(ctx, t, nodes[i], fmt.Sprintf("192.168.%d.%d", 50+i/250, i%250+1))
	}
	api.create(ctx, t, service("churn", "", 0), slice("churn", "10.244.50.1"))
	const ackTimeout = 3 * time.Second
	cp := newControlPlane(t, "controlplane", api.kubeconfig, "-ack-timeout", ackTimeout.String())
	cp.startReady(ctx)
	ap := &applies{name: api.key("churn"), count: map[string]int{}, last: map[string]time.Time{}}
	for _, n := range nodes {
		runAgentWith(ctx, t, n, cp.grpcAddr, ap.recorder(n), "")
	}
	if _, err := ap.wait(ctx, nodes, 1); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	round := 1
	propagate := func() []time.Duration {
		var out []time.Duration
		for range changes {
			round++
			start := time.Now()
			api.setEndpoints(ctx, t, "churn", fmt.Sprintf("10.244.50.%d", round))
			last, err := ap.wait(ctx, nodes, round)
			if err != nil {
				t.Fatalf("change %d: %v", round, err)
			}
			out = append(out, last.Sub(start))
		}
		slices.Sort(out)
		return out
	}
	before := propagate()

	// A stream that asks for a view and never reads.
	conn, err := grpc.NewClient(cp.grpcAddr, append(agent.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api.addNode(ctx, t, "s5-stuck", "192.168.60.1")
	stuckCtx, stopStuck := context.WithCancel(ctx)
	defer stopStuck()
	stream, err := spokev1.NewViewServiceClient(conn).StreamViews(stuckCtx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&spokev1.StreamViewsRequest{NodeName: "s5-stuck"}); err != nil {
		t.Fatal(err)
	}
	stuckAt := time.Now()
	during := propagate()
	eventually(ctx, t, "the stuck stream closed and counted", func() error {
		if got := cp.metric("spoke_controlplane_stuck_agent_disconnects_total", ""); got < 1 {
			return fmt.Errorf("%v stuck agents disconnected", got)
		}
		return nil
	})
	closedAfter := time.Since(stuckAt)
	rss := cp.metric("process_resident_memory_bytes", "")

	p99 := func(d []time.Duration) time.Duration { return d[(len(d)*99+99)/100-1] }
	t.Logf("%d agents, %d changes each way: propagation p50/max %v/%v without a stuck agent, %v/%v with one; stuck stream closed %v after it opened (ack timeout %v); control plane RSS %.0f MiB",
		agents, changes, before[len(before)/2].Round(time.Millisecond), p99(before).Round(time.Millisecond),
		during[len(during)/2].Round(time.Millisecond), p99(during).Round(time.Millisecond), closedAfter.Round(time.Millisecond), ackTimeout, rss/(1<<20))
	// Unchanged, with slack for a shared machine: within twice the figure
	// without the stuck agent, plus half a second.
	if limit := 2*p99(before) + 500*time.Millisecond; p99(during) > limit {
		t.Errorf("propagation to the other agents went from %v to %v with a stuck agent (limit %v)", p99(before), p99(during), limit)
	}
	if closedAfter > ackTimeout+10*time.Second {
		t.Errorf("the stuck stream was closed %v after it opened, past the %v deadline", closedAfter, ackTimeout)
	}
	if rss > 1<<30 {
		t.Errorf("control plane RSS %.0f MiB, above the 1 GiB bound", rss/(1<<20))
	}
}
