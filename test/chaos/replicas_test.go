package chaos

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/spoke-proxy/spoke/datapath/memory"
	"github.com/spoke-proxy/spoke/internal/apiproxy"
	"github.com/spoke-proxy/spoke/internal/background"
	"github.com/spoke-proxy/spoke/nodeagent/agent"
	spokev1 "github.com/spoke-proxy/spoke/proto/spoke/v1"
)

// ledger is every version an agent applied, checked as it comes: a resend
// is a resource received at the version the agent holds; a rollback is a
// resource applied at a version it held before and had replaced or
// removed (versions are content hashes and the churn never repeats
// content, so a version seen again is an older state).
type ledger struct {
	mu        sync.Mutex
	held      map[string]string
	past      map[string]map[string]bool
	applied   int
	resends   []string
	rollbacks []string
}

func newLedger() *ledger {
	return &ledger{held: map[string]string{}, past: map[string]map[string]bool{}}
}

func (l *ledger) add(applied []*spokev1.Resource, removed []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	retire := func(name string) {
		if old := l.held[name]; old != "" {
			if l.past[name] == nil {
				l.past[name] = map[string]bool{}
			}
			l.past[name][old] = true
		}
	}
	for _, r := range applied {
		name, v := r.GetName(), r.GetVersion()
		l.applied++
		switch {
		case l.held[name] == v:
			l.resends = append(l.resends, name+"@"+v)
		case l.past[name][v]:
			l.rollbacks = append(l.rollbacks, name+"@"+v)
		}
		if l.held[name] != v {
			retire(name)
		}
		l.held[name] = v
	}
	for _, name := range removed {
		retire(name)
		delete(l.held, name)
	}
}

// replicaAgent is an agent run in this process whose control-plane name
// resolves to every replica's address.
type replicaAgent struct {
	node string
	a    *agent.Agent
	l    *ledger
}

// runReplicaAgent runs an agent of node on the in-memory datapath whose
// connection resolves to addrs, as a DNS name with one address per replica
// would (a manual resolver stands for DNS: the replicas listen on one
// loopback address, on ports of their own); the agent's own dial options
// choose among them.
func runReplicaAgent(ctx context.Context, t *testing.T, node string, addrs ...string) *replicaAgent {
	t.Helper()
	r := manual.NewBuilderWithScheme("replicas")
	var st resolver.State
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(st)
	conn, err := grpc.NewClient(r.Scheme()+":///spoke-controlplane", append(agent.DialOptions(),
		grpc.WithResolvers(r), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	ra := &replicaAgent{node: node, l: newLedger()}
	ra.a, err = agent.New(agent.Options{NodeName: node, Conn: conn, Datapath: memory.New(memory.Options{}),
		StatePath: filepath.Join(t.TempDir(), node+".db"), RepairInterval: time.Second, OnApplied: ra.l.add})
	if err != nil {
		t.Fatal(err)
	}
	stop := background.Run(ctx, t, "agent "+node, ra.a.Run)
	t.Cleanup(func() {
		stop()
		conn.Close()
	})
	return ra
}

// servedBy returns the replica whose stream serves node, or nil.
func servedBy(ctx context.Context, node string, replicas ...*controlPlane) *controlPlane {
	for _, cp := range replicas {
		if !cp.running() {
			continue
		}
		if _, err := cp.status(ctx, node); err == nil {
			return cp
		}
	}
	return nil
}

// heldBy returns nil once node's agent is served by cp and holds cp's
// view of its node.
func heldBy(ctx context.Context, cp *controlPlane, ra *replicaAgent, others ...*controlPlane) error {
	if by := servedBy(ctx, ra.node, append([]*controlPlane{cp}, others...)...); by != cp {
		name := "no replica"
		if by != nil {
			name = by.name
		}
		return fmt.Errorf("%s is served by %s, not %s", ra.node, name, cp.name)
	}
	return agentConverged(ctx, cp, ra.a, ra.node)
}

// churn changes a service's endpoints every tick, to addresses never used
// before, and touches a node, a service and a slice of its own, so that
// every kind's watch hears from the API server well within the replicas'
// short stall bound. Pause holds it while views are compared.
type churn struct {
	api     *api
	mu      sync.Mutex
	changes int
	stop    func()
}

func startChurn(ctx context.Context, t *testing.T, a *api, services int, every time.Duration) *churn {
	t.Helper()
	c := &churn{api: a}
	a.addNode(ctx, t, "s9-churn", "192.168.9.250")
	a.create(ctx, t, service("churn", "", 0), slice("churn", "10.244.9.250"))
	c.stop = background.Every(ctx, t, every, func(ctx context.Context, i int) {
		c.mu.Lock()
		name := fmt.Sprintf("svc-%d", i%services)
		es, err := a.client.DiscoveryV1().EndpointSlices(a.ns).Get(ctx, name+"-1", metav1.GetOptions{})
		if err == nil {
			es.Endpoints = slice(name, fmt.Sprintf("10.%d.%d.%d", 100+i/62500, i/250%250, i%250+1)).Endpoints
			_, err = a.client.DiscoveryV1().EndpointSlices(a.ns).Update(ctx, es, metav1.UpdateOptions{})
		}
		if err == nil {
			c.changes++
		}
		patch := fmt.Appendf(nil, `{"metadata":{"labels":{"churn":"%d"}}}`, i)
		a.client.CoreV1().Nodes().Patch(ctx, "s9-churn", types.MergePatchType, patch, metav1.PatchOptions{})
		a.client.CoreV1().Services(a.ns).Patch(ctx, "churn", types.MergePatchType, patch, metav1.PatchOptions{})
		a.client.DiscoveryV1().EndpointSlices(a.ns).Patch(ctx, "churn-1", types.MergePatchType, patch, metav1.PatchOptions{})
		c.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			t.Errorf("churn: %v", err)
		}
	})
	return c
}

// paused runs f with the churn held, for at most a few seconds: the
// replicas' stall bound must not pass meanwhile.
func (c *churn) paused(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
}

// viewServing asks a replica's gRPC health service whether its view
// service takes new streams.
func viewServing(ctx context.Context, cp *controlPlane) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cp.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: spokev1.ViewService_ServiceDesc.ServiceName})
	return resp.GetStatus(), err
}

// startServing starts a replica and waits until it is ready and its view
// service says so (the health follows /readyz within half a second).
func startServing(ctx context.Context, cp *controlPlane) {
	cp.t.Helper()
	cp.startReady(ctx)
	eventually(ctx, cp.t, cp.name+"'s view service SERVING", func() error {
		if st, err := viewServing(ctx, cp); err != nil {
			return err
		} else if st != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("view service %v", st)
		}
		return nil
	})
}

// eachHeld waits until each agent has been seen served by a replica and
// holding its view; it returns the replica each was seen on. Under churn
// every agent holds its view at some moments, not all of them at once.
func eachHeld(ctx context.Context, t *testing.T, what string, fleet []*replicaAgent, replicas ...*controlPlane) map[*replicaAgent]*controlPlane {
	t.Helper()
	seen := map[*replicaAgent]*controlPlane{}
	eventually(ctx, t, what, func() error {
		var last error
		for _, ra := range fleet {
			if seen[ra] != nil {
				continue
			}
			by := servedBy(ctx, ra.node, replicas...)
			if by == nil {
				last = fmt.Errorf("%s is not served", ra.node)
				continue
			}
			if err := agentConverged(ctx, by, ra.a, ra.node); err != nil {
				last = err
				continue
			}
			seen[ra] = by
		}
		if len(seen) < len(fleet) {
			return fmt.Errorf("%d of %d agents seen holding their view; %w", len(seen), len(fleet), last)
		}
		return nil
	})
	return seen
}

// TestScenario9ReplicaKilledAndStalled: two control-plane replicas (the
// real binary, each reaching the API server through a proxy of its own)
// serve agents whose control-plane name resolves to both, while services
// churn. The replica serving more of them is SIGKILLed: its agents are
// served by the other and hold its view within 5 s, and no agent is ever
// sent a resource at the version it holds (a resend) or applies a version
// it had replaced (a rollback). The killed replica comes back and takes
// new agents; then its EndpointSlice watch stalls (its proxy holds the
// stream): its /readyz fails, its view service says NOT_SERVING, and the
// agents that start then all go to the other replica and hold its view.
func TestScenario9ReplicaKilledAndStalled(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), pick(4*time.Minute, 15*time.Minute))
	defer cancel()
	api := startAPI(t)
	agents, services := pick(6, 40), pick(20, 200)
	const stallAfter = 4 * time.Second
	for i := range agents {
		api.addNode(ctx, t, fmt.Sprintf("s9-node-%d", i), fmt.Sprintf("192.168.9.%d", i+1))
	}
	for i := range services {
		name := fmt.Sprintf("svc-%d", i)
		api.create(ctx, t, service(name, "", 0), slice(name, fmt.Sprintf("10.244.9.%d", i%250+1)))
	}
	ch := startChurn(ctx, t, api, services, pick(250*time.Millisecond, 100*time.Millisecond))
	replicas := make([]*controlPlane, 2)
	proxies := make([]*apiproxy.Proxy, 2)
	for i, name := range []string{"replica-a", "replica-b"} {
		p, err := apiproxy.New(api.RESTConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		kubeconfig := filepath.Join(t.TempDir(), name+".kubeconfig")
		if err := p.WriteKubeconfig(kubeconfig); err != nil {
			t.Fatal(err)
		}
		proxies[i] = p
		replicas[i] = newControlPlane(t, name, kubeconfig, "-watch-stall-timeout", stallAfter.String())
		startServing(ctx, replicas[i])
	}
	addrs := []string{replicas[0].grpcAddr, replicas[1].grpcAddr}
	var fleet []*replicaAgent
	for i := range agents {
		fleet = append(fleet, runReplicaAgent(ctx, t, fmt.Sprintf("s9-node-%d", i), addrs...))
	}
	// Each is seen on a replica, and stays there: streams do not move.
	served := map[*controlPlane][]*replicaAgent{}
	seen := eachHeld(ctx, t, "every agent holds its replica's view", fleet, replicas...)
	for _, ra := range fleet {
		served[seen[ra]] = append(served[seen[ra]], ra)
	}
	victim, survivor := replicas[0], replicas[1]
	if len(served[survivor]) > len(served[victim]) {
		victim, survivor = survivor, victim
	}
	vi := 0
	if victim == replicas[1] {
		vi = 1
	}
	t.Logf("agents spread: %s serves %d, %s serves %d", victim.name, len(served[victim]), survivor.name, len(served[survivor]))

	// The replica is killed under churn; its agents move.
	time.Sleep(pick(2*time.Second, 10*time.Second))
	sentBefore := survivor.metric("spoke_controlplane_resources_sent_total", "")
	victim.kill()
	killed := time.Now()
	var slowest time.Duration
	// Each agent is watched on its own (one after another, the checks'
	// own time would count against the later ones): served means the
	// survivor lists its stream and the agent has applied the stream's
	// first response. Whether each then holds the survivor's view is
	// compared with the churn held: under a change every tenth of a second
	// an exact comparison of 40 views at once is mostly a race with the
	// next change, and polling it loads the replica it measures.
	deadline := killed.Add(convergeBound)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, ra := range served[victim] {
		wg.Go(func() {
			if err := within(ctx, max(time.Until(deadline), time.Millisecond), func() error {
				if by := servedBy(ctx, ra.node, survivor); by != survivor {
					return fmt.Errorf("%s not served by %s", ra.node, survivor.name)
				}
				st, err := ra.a.GetState(ctx, &spokev1.GetStateRequest{})
				if err != nil {
					return err
				}
				if !st.GetConnected() {
					return fmt.Errorf("%s has no response from %s yet", ra.node, survivor.name)
				}
				return nil
			}); err != nil {
				t.Errorf("%s: %v after %s was killed: %v", ra.node, convergeBound, victim.name, err)
				return
			}
			mu.Lock()
			slowest = max(slowest, time.Since(killed))
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var heldAfter time.Duration
	ch.paused(func() {
		err := within(ctx, 3*time.Second, func() error {
			for _, ra := range served[victim] {
				if err := heldBy(ctx, survivor, ra); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Errorf("with the churn held, the moved agents do not hold %s's view: %v", survivor.name, err)
		}
		heldAfter = time.Since(killed)
	})
	if t.Failed() {
		return
	}
	t.Logf("%d agents of %s served by %s at most %v after the kill; all held its view, compared with the churn held, %v after",
		len(served[victim]), victim.name, survivor.name, slowest.Round(time.Millisecond), heldAfter.Round(time.Millisecond))
	time.Sleep(pick(2*time.Second, 10*time.Second))
	sentAfterKill := survivor.metric("spoke_controlplane_resources_sent_total", "") - sentBefore
	sentOver := time.Since(killed)

	// The killed replica comes back and takes new agents while it is
	// ready.
	startServing(ctx, victim)
	var late []*replicaAgent
	for i := range pick(4, 10) {
		node := fmt.Sprintf("s9-late-%d", i)
		api.addNode(ctx, t, node, fmt.Sprintf("192.168.19.%d", i+1))
		late = append(late, runReplicaAgent(ctx, t, node, addrs...))
	}
	lateOnVictim := 0
	for _, by := range eachHeld(ctx, t, "the late agents hold their replica's view", late, replicas...) {
		if by == victim {
			lateOnVictim++
		}
	}

	// Its EndpointSlice watch stalls: it says so and takes no agent.
	proxies[vi].Freeze("endpointslices")
	frozen := time.Now()
	var notReady, notServing time.Duration
	eventually(ctx, t, victim.name+" not ready and its view service NOT_SERVING", func() error {
		if notReady == 0 {
			if code, body := victim.get("/readyz"); code != http.StatusServiceUnavailable {
				return fmt.Errorf("/readyz %d %s", code, body)
			}
			notReady = time.Since(frozen)
		}
		if st, err := viewServing(ctx, victim); err != nil {
			return err
		} else if st != healthpb.HealthCheckResponse_NOT_SERVING {
			return fmt.Errorf("view service %v", st)
		}
		notServing = time.Since(frozen)
		return nil
	})
	if bound := stallAfter + 5*time.Second; notServing > bound {
		t.Errorf("%s said NOT_SERVING %v after its watch stalled, want within %v", victim.name, notServing.Round(time.Millisecond), bound)
	}
	var after []*replicaAgent
	for i := range pick(6, 20) {
		node := fmt.Sprintf("s9-new-%d", i)
		api.addNode(ctx, t, node, fmt.Sprintf("192.168.29.%d", i+1))
		after = append(after, runReplicaAgent(ctx, t, node, addrs...))
	}
	for ra, by := range eachHeld(ctx, t, "the agents started after the stall hold their replica's view", after, replicas...) {
		if by != survivor {
			t.Errorf("%s started after %s's watch stalled and is served by it", ra.node, victim.name)
		}
	}
	// The stalled replica's views fall behind: what the agents were kept
	// from. One tick of churn later they differ.
	time.Sleep(time.Second)
	stale := 0
	ch.paused(func() {
		for _, ra := range after {
			v1, err1 := victim.view(ctx, ra.node)
			v2, err2 := survivor.view(ctx, ra.node)
			if err1 == nil && err2 == nil && diff(v1, v2) != "" {
				stale++
			}
		}
	})
	if stale == 0 {
		t.Errorf("%s's views equal %s's though its EndpointSlice watch is frozen: the stall did not take", victim.name, survivor.name)
	}
	// Held a few seconds: none goes to the stalled replica.
	time.Sleep(pick(3*time.Second, 15*time.Second))
	for _, ra := range after {
		if by := servedBy(ctx, ra.node, replicas...); by != survivor {
			t.Errorf("%s moved to %v after the stall", ra.node, by)
		}
	}

	// The watch flows again; every agent holds its replica's view, and none
	// was ever sent what it held or rolled back.
	proxies[vi].Thaw("endpointslices")
	ch.stop()
	all := append(append(append([]*replicaAgent{}, fleet...), late...), after...)
	eventually(ctx, t, "every agent holds its replica's view", func() error {
		for _, ra := range all {
			by := servedBy(ctx, ra.node, replicas...)
			if by == nil {
				return fmt.Errorf("%s is not served", ra.node)
			}
			if err := agentConverged(ctx, by, ra.a, ra.node); err != nil {
				return err
			}
		}
		return nil
	})
	applied, resent, rolledBack := 0, 0, 0
	for _, ra := range all {
		ra.l.mu.Lock()
		applied += ra.l.applied
		resent += len(ra.l.resends)
		rolledBack += len(ra.l.rollbacks)
		if len(ra.l.resends) > 0 {
			t.Errorf("%s was sent %d resources at the version it held: %v", ra.node, len(ra.l.resends), head(ra.l.resends))
		}
		if len(ra.l.rollbacks) > 0 {
			t.Errorf("%s rolled back %d resources: %v", ra.node, len(ra.l.rollbacks), head(ra.l.rollbacks))
		}
		ra.l.mu.Unlock()
	}
	t.Logf("%d services, %d endpoint changes; kill: %d agents moved within %v, %s sent %v resources (the churn's changes to every agent) in the %v after; restart: %d of %d new agents on %s; stall: /readyz failed %v and NOT_SERVING %v after the freeze, %d new agents all on %s, %d of their views stale on %s; %d resources applied, %d resent, %d rolled back",
		services, ch.changes, len(served[victim]), slowest.Round(time.Millisecond), survivor.name, sentAfterKill, sentOver.Round(time.Millisecond),
		lateOnVictim, len(late), victim.name, notReady.Round(time.Millisecond), notServing.Round(time.Millisecond), len(after), survivor.name, stale, victim.name, applied, resent, rolledBack)
}
